//! The HTML page of a generated response, for the people who see it in a browser.
//!
//! One self-contained document: inline CSS only (system fonts, a centred card, light and dark
//! colours by `prefers-color-scheme`), no script, no image, no font and no link to anything, so
//! showing it never makes another request. Every interpolated text is HTML-escaped.

use std::{borrow::Cow, fmt::Write};

use crate::ErrorId;

/// The longest delay a page refreshes itself after: 2^31 - 1 milliseconds (about 24.8 days),
/// the largest timer delay browsers honour. A longer `Retry-After` gets no refresh rather than
/// one that a browser's timer might wrap into an immediate reload loop.
const MAX_REFRESH_SECS: u64 = i32::MAX as u64 / 1000;

/// Inline style sheet. Colours are custom properties so the dark palette only swaps values.
const STYLE: &str = "\
:root{color-scheme:light dark;--bg:#f3f4f6;--card:#ffffff;--fg:#1f2328;--muted:#57606a;\
--line:#d0d7de;--accent:#b42318}\
:root.unavailable{--accent:#9a6700}\
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--card:#161b22;--fg:#e6edf3;\
--muted:#9198a1;--line:#30363d;--accent:#ff7b72}:root.unavailable{--accent:#d29922}}\
*{box-sizing:border-box}\
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;\
padding:1.5rem;background:var(--bg);color:var(--fg);\
font:1.0625rem/1.55 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Helvetica Neue\",\
\"Noto Sans\",\"Liberation Sans\",Arial,sans-serif;-webkit-text-size-adjust:100%}\
main{width:100%;max-width:36rem;background:var(--card);border:1px solid var(--line);\
border-radius:12px;padding:2rem 2.25rem;box-shadow:0 1px 3px rgba(0,0,0,.06),\
0 8px 24px rgba(0,0,0,.06)}\
.code{margin:0;font-size:3.25rem;font-weight:700;line-height:1;letter-spacing:-.02em;\
color:var(--accent);font-variant-numeric:tabular-nums}\
h1{margin:.5rem 0 1.25rem;font-size:1.5rem;line-height:1.25;font-weight:600}\
p{margin:.75rem 0}\
.retry{font-weight:600}\
.id{margin:1.75rem 0 0;padding-top:1rem;border-top:1px solid var(--line);font-size:.875rem;\
color:var(--muted)}\
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,\"Liberation Mono\",monospace;\
font-size:.875rem;overflow-wrap:anywhere}\
@media (max-width:30rem){main{padding:1.5rem 1.25rem}.code{font-size:2.5rem}}";

/// The page of a generated response: the status `code` and its `title`, the `detail` text, when
/// to try again (`retry_secs`, the `Retry-After` delay), and the error id.
///
/// With `refresh` and a `retry_secs` (the maintenance page), the page reloads itself once that
/// delay has passed (`<meta http-equiv="refresh">`) and says so. Other pages never reload: an
/// overloaded service must not be polled by every open tab.
pub(crate) fn page(
    code: u16,
    title: &str,
    detail: &str,
    retry_secs: Option<u64>,
    error_id: ErrorId,
    refresh: bool,
) -> String {
    let (title, detail) = (escape_html(title), escape_html(detail));
    let refresh_secs = retry_secs.filter(|&s| refresh && s <= MAX_REFRESH_SECS);
    // 503 says "temporarily": a calmer colour than the failures' red.
    let class = if code == 503 {
        " class=\"unavailable\""
    } else {
        ""
    };

    let mut s = String::with_capacity(2048 + title.len() + detail.len());
    s.push_str("<!DOCTYPE html>\n");
    let _ = writeln!(s, "<html lang=\"en\"{class}>");
    s.push_str("<head>\n<meta charset=\"utf-8\">\n");
    s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    s.push_str("<meta name=\"color-scheme\" content=\"light dark\">\n");
    s.push_str("<meta name=\"robots\" content=\"noindex\">\n");
    if let Some(secs) = refresh_secs {
        let _ = writeln!(s, "<meta http-equiv=\"refresh\" content=\"{secs}\">");
    }
    let _ = writeln!(s, "<title>{code} {title}</title>");
    let _ = writeln!(s, "<style>{STYLE}</style>");
    s.push_str("</head>\n<body>\n<main>\n");
    let _ = writeln!(s, "<p class=\"code\">{code}</p>");
    let _ = writeln!(s, "<h1>{title}</h1>");
    let _ = writeln!(s, "<p class=\"detail\">{detail}</p>");
    if let Some(secs) = retry_secs {
        let _ = writeln!(
            s,
            "<p class=\"retry\">Please try again in {}.</p>",
            delay_text(secs)
        );
    }
    if refresh_secs.is_some() {
        s.push_str("<p class=\"refresh\">This page reloads itself then.</p>\n");
    }
    let _ = writeln!(
        s,
        "<p class=\"id\">Error id: <code>{error_id}</code><br>\
         Quote it if you report this problem.</p>"
    );
    s.push_str("</main>\n</body>\n</html>\n");
    s
}

/// "N seconds" for a short delay; "about M minutes (N seconds)" and so on for longer ones, so a
/// person reads it at a glance and the exact number is still there.
fn delay_text(secs: u64) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    // Rounded to the nearest unit, without `secs + unit / 2` (it overflows on u64::MAX).
    let about = |unit: u64| secs / unit + u64::from(secs % unit >= unit / 2);
    let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let exact = plural(secs, "second");
    let rough = if secs < 2 * MINUTE {
        return exact;
    } else if secs < 2 * HOUR {
        plural(about(MINUTE), "minute")
    } else if secs < 2 * DAY {
        plural(about(HOUR), "hour")
    } else {
        plural(about(DAY), "day")
    };
    format!("about {rough} ({exact})")
}

/// Escapes the five characters that are special in HTML text and attribute values.
fn escape_html(s: &str) -> Cow<'_, str> {
    if !s.contains(['<', '>', '&', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::{ErrorResponse, Format, Reason, RetryAfter};

    fn id() -> ErrorId {
        ErrorId::from(0x3f09_c2d1_a4b7_e65c)
    }

    fn refresh_tag(page: &str) -> Option<&str> {
        let start = page.find("http-equiv=\"refresh\"")?;
        let end = start + page[start..].find('>')?;
        Some(&page[start..end])
    }

    #[test]
    fn the_page_carries_code_title_detail_delay_and_id() {
        let p = page(
            503,
            "Service Unavailable",
            "Upgrading.",
            Some(30),
            id(),
            false,
        );
        assert!(p.starts_with("<!DOCTYPE html>\n"));
        assert!(p.contains("<meta name=\"viewport\""));
        assert!(p.contains("<title>503 Service Unavailable</title>"));
        assert!(p.contains("<p class=\"code\">503</p>"));
        assert!(p.contains("<h1>Service Unavailable</h1>"));
        assert!(p.contains("<p class=\"detail\">Upgrading.</p>"));
        assert!(p.contains("Please try again in 30 seconds."));
        assert!(p.contains("<code>3f09c2d1a4b7e65c</code>"));
        assert!(p.contains("prefers-color-scheme:dark"));
        assert!(p.ends_with("</html>\n"));

        let p = page(500, "Internal Server Error", "Oops.", None, id(), false);
        assert!(!p.contains("try again"), "{p}");
        assert!(!p.contains("class=\"unavailable\""));
    }

    #[test]
    fn refresh_only_when_asked_and_with_a_delay() {
        let p = page(503, "Service Unavailable", "Down.", Some(90), id(), true);
        assert_eq!(
            refresh_tag(&p),
            Some("http-equiv=\"refresh\" content=\"90\"")
        );
        assert!(p.contains("This page reloads itself then."));
        // Exactly one refresh, in the head.
        assert_eq!(p.matches("http-equiv").count(), 1);
        assert!(p.find("http-equiv").unwrap() < p.find("</head>").unwrap());

        for (retry, refresh) in [(None, true), (Some(90), false), (None, false)] {
            let p = page(503, "Service Unavailable", "Down.", retry, id(), refresh);
            assert_eq!(refresh_tag(&p), None, "{retry:?} {refresh}: {p}");
            assert!(!p.contains("reloads itself"));
        }
        // Beyond what browser timers hold: no refresh rather than a reload loop.
        for secs in [MAX_REFRESH_SECS + 1, u64::MAX] {
            let p = page(503, "Service Unavailable", "Down.", Some(secs), id(), true);
            assert_eq!(refresh_tag(&p), None);
            assert!(p.contains(&format!("({secs} seconds)")));
        }
        let p = page(503, "T", "D.", Some(MAX_REFRESH_SECS), id(), true);
        assert!(refresh_tag(&p).is_some());
    }

    #[test]
    fn delays_read_well_and_keep_the_seconds() {
        assert_eq!(delay_text(1), "1 second");
        assert_eq!(delay_text(45), "45 seconds");
        assert_eq!(delay_text(119), "119 seconds");
        assert_eq!(delay_text(120), "about 2 minutes (120 seconds)");
        assert_eq!(delay_text(900), "about 15 minutes (900 seconds)");
        assert_eq!(delay_text(929), "about 15 minutes (929 seconds)");
        assert_eq!(delay_text(930), "about 16 minutes (930 seconds)");
        assert_eq!(delay_text(7200), "about 2 hours (7200 seconds)");
        assert_eq!(delay_text(3 * 86_400), "about 3 days (259200 seconds)");
        // u64::MAX % 86400 is 25215: rounded down.
        assert_eq!(
            delay_text(u64::MAX),
            format!("about {} days ({} seconds)", u64::MAX / 86_400, u64::MAX)
        );
    }

    #[test]
    fn text_is_escaped() {
        let p = page(
            503,
            "<b>\"T\"</b>",
            "<script>alert('x')</script> & <img src=x onerror=y>",
            Some(5),
            id(),
            true,
        );
        assert!(!p.contains("<script>"));
        assert!(!p.contains("<img"));
        assert!(!p.contains("<b>"));
        assert!(p.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;img"));
        assert!(p.contains("<title>503 &lt;b&gt;&quot;T&quot;&lt;/b&gt;</title>"));
        assert_eq!(escape_html("plain"), Cow::Borrowed("plain"));
        assert_eq!(escape_html("a\"b'c"), "a&quot;b&#39;c");
    }

    /// The body `ErrorResponse` generates for a browser.
    fn generated(reason: Reason, retry: Option<u64>) -> String {
        let mut res = ErrorResponse::new(reason_status(reason), reason).format(Format::Html);
        if let Some(secs) = retry {
            res = res.retry_after(RetryAfter::delay(Duration::from_secs(secs)));
        }
        let body = res.into_response::<bytes::Bytes>().into_body();
        String::from_utf8(body.to_vec()).unwrap()
    }

    fn reason_status(reason: Reason) -> StatusCode {
        match reason {
            Reason::Internal | Reason::Panic | Reason::Classified => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::BadGateway => StatusCode::BAD_GATEWAY,
            Reason::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    const REASONS: [Reason; 11] = [
        Reason::Internal,
        Reason::Panic,
        Reason::RateLimited,
        Reason::Draining,
        Reason::Maintenance,
        Reason::Shed,
        Reason::CircuitOpen,
        Reason::Timeout,
        Reason::BadGateway,
        Reason::GatewayTimeout,
        Reason::Classified,
    ];

    #[test]
    fn only_the_maintenance_page_with_a_retry_after_refreshes() {
        for reason in REASONS {
            for retry in [None, Some(1), Some(600)] {
                let p = generated(reason, retry);
                let expected = match (reason, retry) {
                    (Reason::Maintenance, Some(secs)) => {
                        Some(format!("http-equiv=\"refresh\" content=\"{secs}\""))
                    }
                    _ => None,
                };
                assert_eq!(
                    refresh_tag(&p).map(str::to_owned),
                    expected,
                    "{reason:?} {retry:?}: {p}"
                );
            }
        }
    }

    /// No URL, no element or CSS that loads anything.
    fn assert_self_contained(p: &str) {
        for needle in [
            "http://", "https://", "//", "url(", "@import", "src=", "href=",
        ] {
            assert!(!p.contains(needle), "{needle} in {p}");
        }
        for tag in [
            "<script", "<link", "<img", "<iframe", "<object", "<embed", "<form",
        ] {
            assert!(!p.contains(tag), "{tag} in {p}");
        }
    }

    #[test]
    fn no_page_references_anything_outside_itself() {
        for code in [500, 502, 503, 504] {
            for retry in [None, Some(1), Some(900), Some(u64::MAX)] {
                for refresh in [false, true] {
                    assert_self_contained(&page(code, "Title", "Detail.", retry, id(), refresh));
                }
            }
        }
        for reason in REASONS {
            for retry in [None, Some(1), Some(900)] {
                assert_self_contained(&generated(reason, retry));
            }
        }
    }
}
