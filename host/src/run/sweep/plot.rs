//! The sweep's SVG plot: perplexity (log scale) against sparsity, one line per series.

use super::Cell;

/// Perplexity (log scale) against sparsity: one line per metric × allocation; colour by
/// allocation family, dash by metric.
pub fn svg_plot(cells: &[Cell], title: &str) -> String {
    use std::fmt::Write;
    let (w, h) = (820.0, 480.0);
    let (l, r, t, b) = (70.0, 290.0, 40.0, 50.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let pts: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.family != "dense" && c.ppl.is_finite() && c.ppl > 0.0)
        .collect();
    let dense = cells
        .iter()
        .find(|c| c.family == "dense")
        .map(|c| c.ppl)
        .filter(|p| p.is_finite() && *p > 0.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    s.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        l + pw / 2.0,
        xml_escape(title)
    );
    if pts.is_empty() {
        s.push_str("</svg>\n");
        return s;
    }
    let xmin = pts.iter().map(|c| c.sparsity).fold(f64::INFINITY, f64::min);
    let xmax = pts
        .iter()
        .map(|c| c.sparsity)
        .fold(f64::NEG_INFINITY, f64::max);
    let (xmin, xmax) = if xmax > xmin {
        (xmin, xmax)
    } else {
        (xmin - 0.05, xmax + 0.05)
    };
    let ys = pts
        .iter()
        .map(|c| c.ppl.log10())
        .chain(dense.map(f64::log10));
    let ymin = ys.clone().fold(f64::INFINITY, f64::min).floor();
    let ymax = ys.fold(f64::NEG_INFINITY, f64::max).ceil().max(ymin + 1.0);
    let x = |v: f64| l + (v - xmin) / (xmax - xmin) * pw;
    let y = |v: f64| t + ph - (v.log10() - ymin) / (ymax - ymin) * ph;
    // Axes, grid and ticks.
    let _ = write!(
        s,
        r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
    );
    let mut e = ymin as i32;
    while e as f64 <= ymax {
        let yy = t + ph - (e as f64 - ymin) / (ymax - ymin) * ph;
        let _ = write!(
            s,
            r##"<line x1="{l}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">1e{e}</text>"##,
            l + pw,
            l - 6.0,
            yy + 4.0
        );
        e += 1;
    }
    let mut xs: Vec<f64> = pts.iter().map(|c| c.sparsity).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for &v in &xs {
        let xx = x(v);
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" y1="{t}" x2="{xx:.1}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" text-anchor="middle">{:.0} %</text>"##,
            t + ph,
            t + ph + 18.0,
            v * 100.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">target sparsity</text><text transform="translate(18 {}) rotate(-90)" text-anchor="middle">perplexity (log scale)</text>"#,
        l + pw / 2.0,
        h - 10.0,
        t + ph / 2.0
    );
    if let Some(d) = dense {
        let _ = write!(
            s,
            r##"<line x1="{l}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#000" stroke-dasharray="2 4"/><text x="{2}" y="{3:.1}" font-size="11">dense {4:.2}</text>"##,
            y(d),
            l + pw,
            l + 4.0,
            y(d) - 4.0,
            d
        );
    }
    // Series.
    let mut series: Vec<(String, String, String, String)> = Vec::new();
    for c in &pts {
        let k = (
            c.metric.clone(),
            c.pattern.clone(),
            c.allocation.clone(),
            c.family.clone(),
        );
        if !series.contains(&k) {
            series.push(k);
        }
    }
    let mut metric_names: Vec<String> = series.iter().map(|s| s.0.clone()).collect();
    metric_names.dedup();
    let palette = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let mut labels: Vec<String> = Vec::new();
    for (i, (m, p, a, fam)) in series.iter().enumerate() {
        let colour = match fam.as_str() {
            "uniform" => "#555555",
            "owl" => "#ff7f0e",
            "sdsa" => "#2ca02c",
            _ => palette[i % palette.len()],
        };
        // Several variants of one family: vary the colour a little.
        let same_family_before = series[..i].iter().filter(|s| &s.3 == fam).count();
        let colour = if same_family_before == 0 {
            colour.to_string()
        } else {
            palette[(i + same_family_before) % palette.len()].to_string()
        };
        let dash = match metric_names.iter().position(|n| n == m).unwrap_or(0) % 3 {
            0 => "",
            1 => r#" stroke-dasharray="8 4""#,
            _ => r#" stroke-dasharray="2 3""#,
        };
        let mut line: Vec<&&Cell> = pts
            .iter()
            .filter(|c| &c.metric == m && &c.pattern == p && &c.allocation == a)
            .collect();
        line.sort_by(|a, b| a.sparsity.total_cmp(&b.sparsity));
        let path: Vec<String> = line
            .iter()
            .map(|c| format!("{:.1},{:.1}", x(c.sparsity), y(c.ppl)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for c in &line {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{} {} {} @ {:.0} %: {:.3}</title></circle>"#,
                x(c.sparsity),
                y(c.ppl),
                xml_escape(m),
                xml_escape(p),
                xml_escape(a),
                c.sparsity * 100.0,
                c.ppl
            );
        }
        let ly = t + 14.0 + 18.0 * labels.len() as f64;
        let lx = l + pw + 14.0;
        let _ = write!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            lx + 32.0,
            ly + 4.0,
            xml_escape(&format!("{m} ({p}) {a}"))
        );
        labels.push(a.clone());
    }
    s.push_str("</svg>\n");
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
