//! Quota policies and the GCRA arithmetic every store shares.

use std::{cell::RefCell, sync::Arc, time::Duration};

use http::HeaderValue;
use sfv::{key_ref, Integer, KeyRef, ListSerializer, StringRef};

use crate::error::InvalidConfig;

/// The most policies one layer enforces at once (each key keeps one timestamp per policy).
pub const MAX_POLICIES: usize = 4;

/// The largest quota or burst a policy may have: one billion.
pub const MAX_QUOTA: u64 = 1_000_000_000;

/// The longest window a policy may have: 366 days.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

pub(crate) const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A quota policy: at most `quota` requests per `window` for each key, with bursts of up to
/// [`burst`](Self::burst) requests (by default `quota`).
///
/// It is advertised in the `RateLimit-Policy` field as `"name";q=quota;w=window` (window in
/// seconds), and the [`RateLimit`](super#the-fields) field reports each key's remaining quota
/// under the same name.
///
/// Enforced with GCRA (the generic cell rate algorithm): requests are spaced
/// `window / quota` apart on average, and a key that has been quiet may send up to `burst` at
/// once. With the default burst this is a sliding window of `quota` requests per `window`
/// that never resets all at once: a client that used its whole quota gets one request back
/// every `window / quota`.
///
/// ```
/// use std::time::Duration;
/// use tower_5xx::rate_limit::Policy;
///
/// // 10 per second on average, 20 at once after a quiet second.
/// let burst = Policy::new("burst", 10, Duration::from_secs(1)).burst(20);
/// // And 1,000 per hour.
/// let hourly = Policy::new("hourly", 1000, Duration::from_secs(3600));
/// # let _ = (burst, hourly);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    quota: u64,
    window: Duration,
    burst: Option<u64>,
}

impl Policy {
    /// At most `quota` requests per `window` for each key. The name (printable ASCII, no `"`
    /// or `\`, at most 64 characters) identifies the policy in the fields and in the 429's
    /// `violated-policies`. Checked by the layer's `build`: the quota must be 1 to
    /// [`MAX_QUOTA`], the window whole seconds from 1 s to [`MAX_WINDOW`] (the fields carry
    /// seconds), `window / quota` at least 1 µs, and `burst * window / quota` at most 584
    /// years (see [`burst`](Self::burst)).
    pub fn new(name: impl Into<String>, quota: u64, window: Duration) -> Self {
        Self {
            name: Arc::from(name.into()),
            quota,
            window,
            burst: None,
        }
    }

    /// How many requests a key that has been quiet may send at once: 1 to [`MAX_QUOTA`], and
    /// at most 584 years' worth of requests (`burst * window / quota`, the time the burst
    /// takes to replenish, is kept in 64-bit nanoseconds: only a burst far above the quota on
    /// a long window reaches it). Default: the quota.
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests allowed per window.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The burst size (the quota unless set).
    pub fn burst_size(&self) -> u64 {
        self.burst.unwrap_or(self.quota)
    }

    /// Checks the policy and gives its GCRA parameters.
    pub(crate) fn gcra(&self) -> Result<Gcra, InvalidConfig> {
        let name = &*self.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(InvalidConfig::new(
                "policy name",
                "must be 1 to 64 printable ASCII characters other than '\"' and '\\'",
            ));
        }
        if !(1..=MAX_QUOTA).contains(&self.quota) {
            return Err(InvalidConfig::new(
                "policy quota",
                "must be from 1 to 1,000,000,000",
            ));
        }
        if !(1..=MAX_QUOTA).contains(&self.burst_size()) {
            return Err(InvalidConfig::new(
                "policy burst",
                "must be from 1 to 1,000,000,000",
            ));
        }
        if self.window < Duration::from_secs(1)
            || self.window > MAX_WINDOW
            || self.window.subsec_nanos() != 0
        {
            return Err(InvalidConfig::new(
                "policy window",
                "must be whole seconds, from 1 s to 366 days",
            ));
        }
        let interval = self.window.as_secs() * NANOS_PER_SEC / self.quota;
        if interval < 1_000 {
            return Err(InvalidConfig::new(
                "policy quota",
                "must be at most one request per microsecond of the window",
            ));
        }
        // The bounds above keep the interval within u64, not the capacity: a burst far above
        // the quota on a long window takes more than u64 nanoseconds (584 years) to replenish.
        let Some(capacity) = interval.checked_mul(self.burst_size()) else {
            return Err(InvalidConfig::new(
                "policy burst",
                "burst * window / quota must be at most 584 years",
            ));
        };
        Ok(Gcra { interval, capacity })
    }
}

/// The keys of the `RateLimit-Policy` and `RateLimit` parameters.
const Q: &KeyRef = key_ref("q");
const W: &KeyRef = key_ref("w");
const R: &KeyRef = key_ref("r");
const T: &KeyRef = key_ref("t");

/// A checked policy's name as a structured-field string (`gcra` allows only what a string may
/// hold).
fn sf_name(p: &Policy) -> &StringRef {
    StringRef::from_str(&p.name).expect("checked names are valid structured-field strings")
}

/// `n` as a structured-field integer: every number written here (a quota, a window, a reset
/// of at most `u64::MAX` nanoseconds in seconds) is below the 15-digit limit.
fn sf_int(n: u64) -> Integer {
    Integer::try_from(n).expect("the numbers of a checked policy fit a structured-field integer")
}

/// The `RateLimit-Policy` field value of a list of (checked) policies: `"name";q=10;w=1` per
/// policy, serialized by `sfv`.
///
/// It is constant per layer, so the layer computes it once when built
/// (`Shared::policy_header`) and every response gets a clone of that
/// value (a reference count): `sfv` writes into a growing `String` and `HeaderValue` checks
/// and copies it, a few allocations that an admitted response must not pay each time.
pub(crate) fn policy_header(policies: &[Policy]) -> HeaderValue {
    let mut ser = ListSerializer::new();
    for p in policies {
        _ = ser
            .bare_item(sf_name(p))
            .parameter(Q, sf_int(p.quota))
            .parameter(W, sf_int(p.window.as_secs()));
    }
    // `None` for no policy (an empty list is not serialized); a built layer has at least one.
    let out = ser.finish().unwrap_or_default();
    HeaderValue::try_from(out).expect("a structured field is a valid header value")
}

thread_local! {
    /// The buffer `sfv` serializes the `RateLimit` field into, kept per thread so that writing
    /// the field costs one allocation, the header value's own (as the hand-written field did).
    static RATELIMIT_BUF: RefCell<String> = const { RefCell::new(String::new()) };
}

/// GCRA parameters of one policy, in nanoseconds: the emission interval (`window / quota`)
/// and the capacity (`burst * interval`: how far ahead of now a key's theoretical arrival time
/// may run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Gcra {
    pub(crate) interval: u64,
    pub(crate) capacity: u64,
}

impl Gcra {
    /// The verdict for one request at `now`, given the key's theoretical arrival time `tat`
    /// (0 for a key never seen): the new TAT if it is admitted, and the key's debt (how far
    /// its TAT runs ahead of now) after admitting it, or as it stands if not.
    #[inline]
    pub(crate) fn check(self, tat: u64, now: u64) -> Verdict {
        let tat = tat.max(now);
        let new_tat = tat.saturating_add(self.interval);
        let debt_after = new_tat - now;
        if debt_after <= self.capacity {
            Verdict {
                admit: true,
                new_tat,
                debt: debt_after,
                debt_before: tat - now,
            }
        } else {
            Verdict {
                admit: false,
                new_tat: tat,
                debt: tat - now,
                debt_before: tat - now,
            }
        }
    }

    /// What the fields say about a key with `debt` after the decision.
    #[inline]
    pub(crate) fn status(self, debt: u64, violated: bool) -> PolicyStatus {
        if violated {
            PolicyStatus {
                remaining: 0,
                reset: debt,
                // The wait until one more request fits under the capacity.
                wait: debt
                    .saturating_add(self.interval)
                    .saturating_sub(self.capacity),
                violated: true,
            }
        } else {
            PolicyStatus {
                remaining: self.capacity.saturating_sub(debt) / self.interval,
                reset: debt,
                wait: 0,
                violated: false,
            }
        }
    }
}

/// One policy's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) admit: bool,
    pub(crate) new_tat: u64,
    pub(crate) debt: u64,
    /// The debt as it stands, without this request (what the fields report when another
    /// policy refuses it).
    pub(crate) debt_before: u64,
}

/// One policy's state for the response fields: remaining requests, nanoseconds until the key
/// is back to its full burst, and (when violated) nanoseconds until the next request fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PolicyStatus {
    pub(crate) remaining: u64,
    pub(crate) reset: u64,
    pub(crate) wait: u64,
    pub(crate) violated: bool,
}

/// A decision over all the policies of a layer: whether the request is admitted, and each
/// policy's debt (how far the key's TAT runs ahead of now) and verdict. Small (40 bytes) and
/// cheap to make: what the fields say is computed from it only when they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Decision {
    pub(crate) admit: bool,
    pub(crate) len: u8,
    /// Bit `i`: policy `i` refused the request.
    violated: u8,
    debts: [u64; MAX_POLICIES],
}

impl Decision {
    /// From each policy's debt and whether it was violated.
    #[inline]
    pub(crate) fn from_debts(debts: &[u64], violated: &[bool]) -> Self {
        let mut d = Decision {
            len: debts.len() as u8,
            ..Decision::default()
        };
        for (i, (&debt, &v)) in debts.iter().zip(violated).enumerate() {
            d.debts[i] = debt;
            d.violated |= u8::from(v) << i;
        }
        d.admit = d.violated == 0;
        d
    }

    /// What the fields say for each policy.
    pub(crate) fn statuses<'a>(
        &'a self,
        gcras: &'a [Gcra],
    ) -> impl Iterator<Item = PolicyStatus> + 'a {
        gcras
            .iter()
            .take(usize::from(self.len))
            .enumerate()
            .map(|(i, g)| g.status(self.debts[i], self.violated & (1 << i) != 0))
    }

    /// The wait until the request would be admitted: the longest over the violated policies.
    pub(crate) fn wait(&self, gcras: &[Gcra]) -> Duration {
        Duration::from_nanos(self.statuses(gcras).map(|s| s.wait).max().unwrap_or(0))
    }

    /// The `RateLimit` field value: `"name";r=4;t=2` per policy, `t` in whole seconds rounded
    /// up, serialized by `sfv`. This runs for every admitted request: `sfv` writes into a
    /// buffer kept per thread, and the one allocation is the header value's own.
    pub(crate) fn header(&self, policies: &[Policy], gcras: &[Gcra]) -> HeaderValue {
        RATELIMIT_BUF.with_borrow_mut(|buf| {
            buf.clear();
            let mut ser = ListSerializer::with_buffer(buf);
            for (s, p) in self.statuses(gcras).zip(policies) {
                _ = ser
                    .bare_item(sf_name(p))
                    .parameter(R, sf_int(s.remaining))
                    .parameter(T, sf_int(s.reset.div_ceil(NANOS_PER_SEC)));
            }
            // `None` for no policy: the buffer stays empty.
            let _ = ser.finish();
            HeaderValue::from_str(buf).expect("a structured field is a valid header value")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn bad_policies_are_refused() {
        let bad = [
            Policy::new("", 10, S(1)),
            Policy::new("a\"b", 10, S(1)),
            Policy::new("a\\b", 10, S(1)),
            Policy::new("é", 10, S(1)),
            Policy::new("x".repeat(65), 10, S(1)),
            Policy::new("p", 0, S(1)),
            Policy::new("p", MAX_QUOTA + 1, S(1_000_000)),
            Policy::new("p", u64::MAX, S(1)),
            Policy::new("p", 10, Duration::ZERO),
            Policy::new("p", 10, Duration::from_millis(500)),
            Policy::new("p", 10, Duration::from_millis(1500)),
            Policy::new("p", 10, MAX_WINDOW + S(1)),
            Policy::new("p", 10, Duration::MAX),
            Policy::new("p", 10, S(1)).burst(0),
            Policy::new("p", 10, S(1)).burst(u64::MAX),
            // Two million a second: more than one per microsecond.
            Policy::new("p", 2_000_000, S(1)),
            // A burst that takes 1,000 years to replenish: beyond u64 nanoseconds.
            Policy::new("p", 1, MAX_WINDOW).burst(1_000),
        ];
        for p in bad {
            let e = p.gcra().unwrap_err();
            assert!(e.setting().starts_with("policy"), "{p:?}: {e}");
        }
        let g = Policy::new("burst", 10, S(1)).burst(20).gcra().unwrap();
        assert_eq!(g.interval, 100_000_000);
        assert_eq!(g.capacity, 2_000_000_000);
        assert!(Policy::new("p", MAX_QUOTA, MAX_WINDOW).gcra().is_ok());
    }

    #[test]
    fn gcra_admits_the_burst_then_one_per_interval() {
        let g = Policy::new("p", 5, S(10)).gcra().unwrap();
        let mut tat = 0;
        let now = 1_000 * NANOS_PER_SEC;
        for i in 0..5 {
            let v = g.check(tat, now);
            assert!(v.admit, "request {i}");
            tat = v.new_tat;
            let s = g.status(v.debt, false);
            assert_eq!(s.remaining, 4 - i);
            assert_eq!(s.reset, (i + 1) * 2 * NANOS_PER_SEC);
        }
        let v = g.check(tat, now);
        assert!(!v.admit);
        assert_eq!(v.new_tat, tat, "a refusal costs nothing");
        let s = g.status(v.debt, true);
        assert_eq!(
            (s.remaining, s.reset, s.wait),
            (0, 10 * NANOS_PER_SEC, 2 * NANOS_PER_SEC)
        );
        // One interval later, exactly one more.
        let later = now + 2 * NANOS_PER_SEC;
        let v = g.check(tat, later);
        assert!(v.admit);
        assert!(!g.check(v.new_tat, later).admit);
    }

    #[test]
    fn any_state_from_a_store_is_reported_without_overflow() {
        let g = Policy::new("p", 5, S(10)).gcra().unwrap();
        let s = g.status(u64::MAX, true);
        assert_eq!((s.remaining, s.reset), (0, u64::MAX));
        assert_eq!(s.wait, u64::MAX - g.capacity);
        let d = Decision::from_debts(&[u64::MAX], &[true]);
        assert_eq!(
            d.header(&[Policy::new("p", 5, S(10))], &[g]),
            "\"p\";r=0;t=18446744074"
        );
        assert!(g.check(u64::MAX, 0).debt == u64::MAX && !g.check(u64::MAX, 0).admit);
    }

    #[test]
    fn the_fields_are_structured_field_lists() {
        let policies = [
            Policy::new("burst", 10, S(1)).burst(20),
            Policy::new("hourly", 1000, S(3600)),
        ];
        assert_eq!(
            policy_header(&policies),
            "\"burst\";q=10;w=1, \"hourly\";q=1000;w=3600"
        );
        let gcras: Vec<Gcra> = policies.iter().map(|p| p.gcra().unwrap()).collect();
        let d = Decision::from_debts(&[2_000_000_000, 3_600_000_000], &[true, false]);
        assert!(!d.admit);
        assert_eq!(
            d.header(&policies, &gcras),
            "\"burst\";r=0;t=2, \"hourly\";r=999;t=4"
        );
        assert_eq!(d.wait(&gcras), Duration::from_millis(100));
    }

    #[test]
    fn the_fields_parse_back_as_rfc_9651_lists() {
        // A name with every character a policy may have: spaces, commas, semicolons, '='.
        let policies = [
            Policy::new("a b,c;d=e", 10, S(1)),
            Policy::new("~!#$%&'()*+-./:<>?@[]^_`{|}", 1_000_000_000, MAX_WINDOW),
        ];
        let gcras: Vec<Gcra> = policies.iter().map(|p| p.gcra().unwrap()).collect();
        let d = Decision::from_debts(&[u64::MAX, 0], &[true, false]);
        for (field, keys) in [
            (policy_header(&policies), ["q", "w"]),
            (d.header(&policies, &gcras), ["r", "t"]),
        ] {
            let list: sfv::List = sfv::Parser::new(field.as_bytes()).parse().unwrap();
            assert_eq!(list.len(), 2, "{field:?}");
            for (member, p) in list.iter().zip(&policies) {
                let sfv::ListEntry::Item(item) = member else {
                    panic!("{field:?}")
                };
                assert_eq!(item.bare_item.as_string().unwrap().as_str(), p.name());
                let got: Vec<&str> = item.params.keys().map(|k| k.as_str()).collect();
                assert_eq!(got, keys);
            }
        }
        assert_eq!(
            policy_header(&policies),
            r#""a b,c;d=e";q=10;w=1, "~!#$%&'()*+-./:<>?@[]^_`{|}";q=1000000000;w=31622400"#
        );
        assert_eq!(
            d.header(&policies, &gcras),
            r#""a b,c;d=e";r=0;t=18446744074, "~!#$%&'()*+-./:<>?@[]^_`{|}";r=1000000000;t=0"#
        );
        // The per-thread buffer is cleared between fields.
        let one = Decision::from_debts(&[0], &[false]);
        assert_eq!(
            one.header(&policies[..1], &gcras[..1]),
            r#""a b,c;d=e";r=10;t=0"#
        );
    }
}
