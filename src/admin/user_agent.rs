//! "Firefox 128 on Linux" from a User-Agent header: enough for an admin to recognise a
//! session, with no parser dependency. Order matters: Edge and Opera also say "Chrome", and
//! Chrome also says "Safari".

const BROWSERS: &[(&str, &str)] = &[
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("Chromium/", "Chromium"),
    ("HeadlessChrome/", "Headless Chrome"),
    ("Chrome/", "Chrome"),
    ("Version/", "Safari"),
    ("curl/", "curl"),
];

const SYSTEMS: &[(&str, &str)] = &[
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
];

/// A short description of the browser and system; "Unknown" when there is nothing to go on.
pub fn describe(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent.filter(|ua| !ua.trim().is_empty()) else {
        return "Unknown".to_owned();
    };
    let browser = BROWSERS.iter().find_map(|(token, name)| {
        let rest = &ua[ua.find(token)? + token.len()..];
        let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(if major.is_empty() {
            (*name).to_owned()
        } else {
            format!("{name} {major}")
        })
    });
    let system = SYSTEMS
        .iter()
        .find(|(token, _)| ua.contains(token))
        .map(|(_, name)| *name);
    match (browser, system) {
        (Some(b), Some(s)) => format!("{b} on {s}"),
        (Some(b), None) => b,
        (None, Some(s)) => format!("Other browser on {s}"),
        (None, None) => ua.chars().take(40).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn common_browsers_are_named() {
        let cases = [
            (
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                "Firefox 128 on Linux",
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0",
                "Edge 126 on Windows",
            ),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                "Safari 17 on macOS",
            ),
            (
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
                "Chrome 126 on Android",
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
                "Safari 17 on iOS",
            ),
            ("curl/8.5.0", "curl 8"),
        ];
        for (ua, expected) in cases {
            assert_eq!(describe(Some(ua)), expected, "{ua}");
        }
    }

    #[test]
    fn missing_or_odd_agents_do_not_break_the_page() {
        assert_eq!(describe(None), "Unknown");
        assert_eq!(describe(Some("  ")), "Unknown");
        assert_eq!(describe(Some("Firefox/")), "Firefox");
        let long = "x".repeat(1000);
        assert_eq!(describe(Some(&long)).len(), 40);
    }
}
