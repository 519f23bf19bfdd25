//! A page of sections (text, key figures, tables, charts) rendered as one HTML file
//! with its styles and charts inline: it opens anywhere, offline, and can be mailed.

use crate::ReportError;
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    Text(String),
    /// Text shown as printed (a command's summary table).
    Preformatted(String),
    /// Named figures in a row of cards.
    Facts(Vec<(String, String)>),
    Table {
        columns: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// An SVG chart; `name` is its file stem when the page is written.
    Figure {
        name: String,
        svg: String,
        caption: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub heading: String,
    pub blocks: Vec<Block>,
}

impl Section {
    pub fn text(&mut self, text: &str) -> &mut Self {
        self.blocks.push(Block::Text(text.to_string()));
        self
    }

    pub fn preformatted(&mut self, text: &str) -> &mut Self {
        self.blocks.push(Block::Preformatted(text.to_string()));
        self
    }

    pub fn facts(&mut self, facts: Vec<(String, String)>) -> &mut Self {
        self.blocks.push(Block::Facts(facts));
        self
    }

    pub fn table(&mut self, columns: &[&str], rows: Vec<Vec<String>>) -> &mut Self {
        let columns = columns.iter().map(|c| c.to_string()).collect();
        self.blocks.push(Block::Table { columns, rows });
        self
    }

    pub fn figure(&mut self, name: &str, svg: String, caption: &str) -> &mut Self {
        self.blocks.push(Block::Figure {
            name: name.to_string(),
            svg,
            caption: caption.to_string(),
        });
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub title: String,
    pub subtitle: String,
    pub sections: Vec<Section>,
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d3557;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}header p{margin:4px 0 0;opacity:.8}
main{padding:8px 28px 40px}section{background:#fff;border-radius:8px;padding:14px 20px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:17px;margin:4px 0 10px}.facts{display:flex;flex-wrap:wrap;gap:10px}.fact{background:#eef2f7;border-radius:6px;padding:8px 12px;min-width:110px}
.fact b{display:block;font-size:19px}.fact span{font-size:12px;color:#556}table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #e3e6eb;padding:4px 10px;text-align:right}th{background:#f0f2f5}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:8px 12px 8px 0;vertical-align:top}figcaption{font-size:12px;color:#556;max-width:640px}
.scroll{max-height:420px;overflow:auto}pre{font-size:12px;overflow:auto;background:#f7f8fa;padding:8px}";

impl Page {
    pub fn new(title: &str) -> Self {
        Page {
            title: title.to_string(),
            subtitle: String::new(),
            sections: Vec::new(),
        }
    }

    pub fn subtitle(mut self, subtitle: &str) -> Self {
        self.subtitle = subtitle.to_string();
        self
    }

    /// Appends a section and returns it to fill.
    pub fn section(&mut self, heading: &str) -> &mut Section {
        self.sections.push(Section {
            heading: heading.to_string(),
            blocks: Vec::new(),
        });
        let last = self.sections.len() - 1;
        &mut self.sections[last]
    }

    pub fn figures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sections
            .iter()
            .flat_map(|s| &s.blocks)
            .filter_map(|b| match b {
                Block::Figure { name, svg, .. } => Some((name.as_str(), svg.as_str())),
                _ => None,
            })
    }

    /// The whole document: styles and charts inline, no script.
    pub fn to_html(&self) -> String {
        self.document("", "")
    }

    /// The document with `head_extra` in its head and `script` at the end of its body
    /// (the dashboard's live updates).
    pub fn document(&self, head_extra: &str, script: &str) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{STYLE}</style>{head_extra}</head><body>",
            escape(&self.title)
        );
        out.push_str("<div id=\"page\">");
        out.push_str(&self.body_html());
        out.push_str("</div>");
        out.push_str(script);
        out.push_str("</body></html>\n");
        out
    }

    /// The header and sections, for replacing a live page's content.
    pub fn body_html(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "<header><h1>{}</h1><p>{}</p></header><main>",
            escape(&self.title),
            escape(&self.subtitle)
        );
        for s in &self.sections {
            let _ = write!(out, "<section><h2>{}</h2>", escape(&s.heading));
            for b in &s.blocks {
                block_html(&mut out, b);
            }
            out.push_str("</section>");
        }
        out.push_str("</main>");
        out
    }

    /// Writes the page to `path` and each chart beside it as
    /// `<stem>-figures/<name>.svg`; returns the files written.
    pub fn write(&self, path: &Path) -> Result<Vec<PathBuf>, ReportError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReportError::Write { path, source }
        };
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("report");
        let dir = path.with_file_name(format!("{stem}-figures"));
        let mut written = Vec::new();
        if self.figures().next().is_some() {
            std::fs::create_dir_all(&dir).map_err(err(&dir))?;
        }
        for (name, svg) in self.figures() {
            let file = dir.join(format!("{}.svg", file_safe(name)));
            std::fs::write(&file, svg).map_err(err(&file))?;
            written.push(file);
        }
        // Whole or not at all, for whoever opens the page as it is written.
        let partial = path.with_extension("html.partial");
        std::fs::write(&partial, self.to_html()).map_err(err(&partial))?;
        std::fs::rename(&partial, path).map_err(err(path))?;
        written.insert(0, path.to_path_buf());
        Ok(written)
    }
}

fn block_html(out: &mut String, b: &Block) {
    match b {
        Block::Text(t) => {
            let _ = write!(out, "<p>{}</p>", escape(t));
        }
        Block::Preformatted(t) => {
            let _ = write!(out, "<pre>{}</pre>", escape(t));
        }
        Block::Facts(facts) => {
            out.push_str("<div class=\"facts\">");
            for (k, v) in facts {
                let _ = write!(
                    out,
                    "<div class=\"fact\"><b>{}</b><span>{}</span></div>",
                    escape(v),
                    escape(k)
                );
            }
            out.push_str("</div>");
        }
        Block::Table { columns, rows } => {
            out.push_str("<div class=\"scroll\"><table><thead><tr>");
            for c in columns {
                let _ = write!(out, "<th>{}</th>", escape(c));
            }
            out.push_str("</tr></thead><tbody>");
            for r in rows {
                out.push_str("<tr>");
                for c in r {
                    let _ = write!(out, "<td>{}</td>", escape(c));
                }
                out.push_str("</tr>");
            }
            out.push_str("</tbody></table></div>");
        }
        Block::Figure { name, svg, caption } => {
            // The SVG comes from this crate's charts, which escape their own text.
            let _ = write!(
                out,
                "<figure data-name=\"{}\">{svg}<figcaption>{}</figcaption></figure>",
                escape(name),
                escape(caption)
            );
        }
    }
}

fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Text made safe for HTML content and attribute values.
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
    use crate::{LineChart, Series};

    fn sample() -> Page {
        let mut page = Page::new("Job <demand>").subtitle("40 stores");
        page.section("Summary")
            .facts(vec![("stores".into(), "40".into())])
            .text("Store \"a\" & b")
            .table(&["store", "WAPE"], vec![vec!["s1".into(), "31.5 %".into()]]);
        let chart = LineChart::new("Rounds", "round", "s")
            .series(Series::new("time", vec![(1.0, 0.1), (2.0, 0.2)]));
        page.section("Rounds")
            .figure("round/time", chart.svg(), "per round");
        page
    }

    #[test]
    fn text_is_escaped_and_every_block_is_rendered() {
        let html = sample().to_html();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("Job &lt;demand&gt;"));
        assert!(html.contains("Store &quot;a&quot; &amp; b"));
        assert!(html.contains("<td>31.5 %</td>") && html.contains("<b>40</b>"));
        assert!(html.contains("<svg") && html.contains("<figcaption>per round</figcaption>"));
        assert!(!html.contains("<script"), "a report needs no script");
    }

    #[test]
    fn writing_puts_each_chart_beside_the_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.html");
        let written = sample().write(&path).unwrap();
        assert_eq!(written[0], path);
        let svg = dir.path().join("report-figures").join("round_time.svg");
        assert_eq!(written[1], svg);
        assert!(std::fs::read_to_string(svg).unwrap().starts_with("<svg"));
        assert!(std::fs::read_to_string(path).unwrap().contains("<svg"));
    }
}
