//! Plain-text tables for the CLI reports.

/// Renders an aligned text table: the first column left-aligned, the others right-aligned,
/// columns separated by two spaces, a dashed rule under the header.
pub fn aligned<const N: usize>(header: [&str; N], cells: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, row: &[String]| {
        let parts: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    let mut out = String::new();
    line(&mut out, &header.map(String::from));
    line(&mut out, &widths.map(|w| "-".repeat(w)));
    for row in cells {
        line(&mut out, row);
    }
    out
}
