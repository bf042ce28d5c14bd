//! RFC 3339 time stamps for records, formatted once per second per thread.

#[allow(unused_imports)]
use super::*;

/// Now, RFC 3339 UTC with milliseconds. The date and time up to the
/// second are formatted once per second per thread; records only append
/// the milliseconds.
pub(crate) fn now_rfc3339() -> String {
    now_rfc3339_in(&mut [0; 24]).to_owned()
}

/// [`now_rfc3339`], written into `buf` (no allocation).
pub(crate) fn now_rfc3339_in(buf: &mut [u8; 24]) -> &str {
    use std::cell::Cell;
    thread_local! {
        /// The second last formatted, and its text up to the second.
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let now = SystemTime::now();
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, mut text) = SECOND.get();
    if secs != d.as_secs() {
        text.copy_from_slice(&rfc3339(now).as_bytes()[..19]);
        SECOND.set((d.as_secs(), text));
    }
    buf[..19].copy_from_slice(&text);
    let ms = d.subsec_millis();
    buf[19] = b'.';
    buf[20] = b'0' + (ms / 100) as u8;
    buf[21] = b'0' + (ms / 10 % 10) as u8;
    buf[22] = b'0' + (ms % 10) as u8;
    buf[23] = b'Z';
    // ASCII digits and punctuation: always UTF-8.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// `t` as RFC 3339 UTC with milliseconds (`2026-11-23T22:36:01.123Z`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}
