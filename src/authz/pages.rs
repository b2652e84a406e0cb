//! Small self-contained HTML pages for people who hit a denial in a browser (no external assets,
//! no script). Non-browser clients get JSON instead; see [`crate::authz::decision::render`].

/// The page for a denial: what happened and what to do.
pub fn denial(status: u16, message: &str) -> String {
    let (title, hint) = match status {
        400 => ("Not a preview address", "Check the address you were given."),
        401 => (
            "Sign-in needed",
            "Open the share link you were given again, or ask its owner for a new one.",
        ),
        403 => (
            "No access",
            "Your link does not open this sandbox or port. Ask its owner for a link that does.",
        ),
        404 => (
            "Sandbox not found",
            "The sandbox may have been deleted. Ask its owner.",
        ),
        431 => (
            "Request too large",
            "Clear this site's cookies and try again.",
        ),
        502 => (
            "Preview unavailable",
            "The preview proxy cannot reach this sandbox. Tell the platform team.",
        ),
        503 => (
            "Try again shortly",
            "The sandbox service is busy or restarting. Reload in a few seconds.",
        ),
        _ => ("Request refused", "Check the address you were given."),
    };
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{status} {title}</title>
<style>
body{{font:16px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}}
main{{max-width:34rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:12px;box-shadow:0 1px 4px #0002}}
h1{{font-size:1.4rem;margin:0 0 .75rem}} .code{{color:#6b7280;font-size:.9rem}} p{{margin:.5rem 0}}
</style>
</head>
<body>
<main>
<p class="code">Error {status}</p>
<h1>{title}</h1>
<p>{message}</p>
<p>{hint}</p>
</main>
</body>
</html>
"#,
        message = escape(message),
    )
}

/// Escapes text for an HTML element body or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_self_contained_and_escaped() {
        let page = denial(404, "<script>alert(1)</script> & more");
        assert!(page.contains("Sandbox not found"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; more"));
        assert!(!page.contains("<script>"));
        for external in ["src=", "href=", "http://", "https://", "@import", "url("] {
            assert!(!page.contains(external), "{external}");
        }
    }
}
