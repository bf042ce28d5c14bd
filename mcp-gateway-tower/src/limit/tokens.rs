//! Counting tokens for token budgets: [`TokenCounter`].

#[allow(unused_imports)]
use super::*;

/// Counts tokens in bytes of JSON.
pub trait TokenCounter: Send + Sync + 'static {
    /// Tokens in `bytes`.
    fn count(&self, bytes: &[u8]) -> u64;
}

/// The default approximation: one token per four bytes, rounded up. BPE
/// tokenizers of current models average close to four characters of
/// English or JSON per token; the approximation errs on neither side by
/// much and costs nothing. Swap in a real tokenizer through the trait when
/// budgets must match a model's billing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApproxTokenCounter;

impl TokenCounter for ApproxTokenCounter {
    fn count(&self, bytes: &[u8]) -> u64 {
        (bytes.len() as u64).div_ceil(4)
    }
}
