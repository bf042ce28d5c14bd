//! Choosing the instance of a new session or a stateless call.

use std::sync::Arc;

use mcp_gateway_core::McpRequest;

use crate::upstream::Instances;

/// Picks the backend instance for a new session or a stateless call.
///
/// [`Instances`] tells which instances are eligible (healthy, not ejected,
/// not draining) and how loaded they are. A pick that is not eligible is
/// not used: the router falls back to the configured balance, so a
/// selector of your own never sends traffic to a dead instance.
pub trait BackendSelector: Send + Sync + 'static {
    /// The instance index, or `None` to leave it to the configured balance.
    fn select(&self, request: &McpRequest, instances: &Instances) -> Option<usize>;
}

impl<F> BackendSelector for F
where
    F: Fn(&McpRequest, &Instances) -> Option<usize> + Send + Sync + 'static,
{
    fn select(&self, request: &McpRequest, instances: &Instances) -> Option<usize> {
        self(request, instances)
    }
}

/// The instance for `request`: the selector's pick if it is eligible and
/// not in `tried`, else the configured balance's.
pub(crate) fn choose(
    selector: Option<&Arc<dyn BackendSelector>>,
    instances: &Instances,
    request: Option<&McpRequest>,
    tried: &[usize],
) -> Option<usize> {
    if let (Some(s), Some(r)) = (selector, request) {
        if let Some(i) = s.select(r, instances) {
            if !tried.contains(&i) && instances.is_eligible(i) {
                return Some(i);
            }
        }
    }
    instances.pick_except(tried)
}
