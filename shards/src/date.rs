//! The `Date` header value (RFC 9110 §5.6.7), formatted at most once per second per core. The
//! second is read from the kernel's coarse real-time clock (a memory read, where the precise
//! clock reads the time-stamp counter too): whole seconds need no more.

use nix::time::{clock_gettime, ClockId};
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Calls `f` with the current IMF-fixdate, e.g. `Mon, 30 Nov 2026 21:12:44 GMT`.
pub fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    let secs = match clock_gettime(ClockId::CLOCK_REALTIME_COARSE) {
        Ok(t) => t.tv_sec() as u64,
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            c.1 = format(secs);
            c.0 = secs;
        }
        f(&c.1)
    })
}

fn format(secs: u64) -> [u8; 29] {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (y, m, d) = kateway_core::units::civil_from_days(days);
    let s = format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    let mut out = [b' '; 29];
    out.copy_from_slice(&s.as_bytes()[..29]);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_imf_fixdate() {
        assert_eq!(&super::format(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &super::format(1_796_073_164),
            b"Mon, 30 Nov 2026 21:12:44 GMT"
        );
    }
}
