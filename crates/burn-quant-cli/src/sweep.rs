//! `burnq sweep`: a grid of `ptq-llm` recipes on one loaded model, written as a Markdown table,
//! a CSV file and an SVG plot of perplexity and KL divergence per cell.
//!
//! A sweep file names a base recipe and the grid axes; each axis is a field of
//! [`PtqLlmOptions`] with a list of values, and every combination is one cell:
//!
//! ```toml
//! [base]                 # any ptq-llm recipe fields
//! group_size = 128
//! [grid]                 # axes, combined in alphabetical order of their names
//! algo = ["rtn", "gptq"]
//! weight_bits = [4, 3]
//! weight_scale = ["qmax", "neg-qmin", "signed-extreme", "mse"]
//! ```
//!
//! A cell whose recipe is invalid or whose run fails is reported with its error and the sweep
//! goes on. The model, its FP32 evaluation and the texts are loaded once.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{CliError, Result};
use crate::ptq_llm::{PtqLlmOptions, PtqLlmRow, PtqLlmSession};

/// A sweep file: a base recipe and the grid axes.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// The model (overridden by `--model`).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Fields every cell shares (a `ptq-llm` recipe; FP32 is evaluated once, not per cell).
    #[serde(default)]
    pub base: toml::Table,
    /// Axis name (a recipe field) → the values it takes.
    #[serde(default)]
    pub grid: toml::Table,
}

/// One cell of the grid: its axis values and its recipe (or why it has none).
#[derive(Clone, Debug)]
pub struct SweepCell {
    /// `(axis, value)` in axis order.
    pub axes: Vec<(String, String)>,
    /// The cell's recipe, or the error that made it invalid.
    pub options: std::result::Result<PtqLlmOptions, String>,
}

/// What one cell gave.
#[derive(Clone, Debug)]
pub struct SweepResult {
    /// The cell.
    pub cell: SweepCell,
    /// The quantized model's row, or the error of a failed cell.
    pub row: std::result::Result<PtqLlmRow, String>,
}

/// The sweep's results with the FP32 reference.
#[derive(Clone, Debug)]
pub struct SweepReport {
    /// The axes in order.
    pub axes: Vec<String>,
    /// The FP32 row.
    pub fp32: Option<PtqLlmRow>,
    /// One result per cell, in grid order.
    pub results: Vec<SweepResult>,
}

impl SweepConfig {
    /// Reads a sweep file (`.toml` or `.json`); unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self> {
        crate::ptq_llm::read_recipe_file(path, "sweep")
    }

    /// The base recipe alone (what the FP32 row is evaluated under); a base that is not a
    /// recipe is an error naming `base`.
    pub fn base_options(&self) -> Result<PtqLlmOptions> {
        serde_json::to_value(&self.base)
            .and_then(serde_json::from_value)
            .map_err(|e| CliError::config("base", "table", e.to_string()))
    }

    /// Every cell of the grid (the cartesian product of the axes, the last axis fastest). A
    /// cell whose merged recipe does not parse or check keeps its error. An axis that is not a
    /// list, or an empty one, is an error of the whole sweep.
    pub fn cells(&self) -> Result<Vec<SweepCell>> {
        let base = serde_json::to_value(&self.base)
            .map_err(|e| CliError::config("base", "table", e.to_string()))?;
        let mut axes: Vec<(String, Vec<Value>)> = vec![];
        for (name, values) in &self.grid {
            let toml::Value::Array(list) = values else {
                return Err(CliError::config(
                    "grid",
                    name,
                    "every axis is a list of values",
                ));
            };
            if list.is_empty() {
                return Err(CliError::config(
                    "grid",
                    name,
                    "an axis needs at least one value",
                ));
            }
            let list = list
                .iter()
                .map(|v| {
                    serde_json::to_value(v)
                        .map_err(|e| CliError::config("grid", name, e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            axes.push((name.clone(), list));
        }
        let total: usize = axes.iter().map(|(_, v)| v.len()).product();
        let mut cells = Vec::with_capacity(total);
        for k in 0..total {
            let mut rest = k;
            let mut picked = vec![];
            for (name, values) in axes.iter().rev() {
                picked.push((name.clone(), values[rest % values.len()].clone()));
                rest /= values.len();
            }
            picked.reverse();
            let mut recipe = base.clone();
            let Value::Object(map) = &mut recipe else {
                unreachable!("a TOML table serialises to a JSON object")
            };
            // FP32 is evaluated once for the whole sweep.
            map.insert("eval_float".into(), Value::Bool(false));
            for (name, v) in &picked {
                match (name.as_str(), v) {
                    // A `case` sets several fields at once; its `name` labels it.
                    (CASE_AXIS, Value::Object(fields)) => {
                        for (f, fv) in fields {
                            if f != "name" {
                                map.insert(f.clone(), fv.clone());
                            }
                        }
                    }
                    _ => {
                        map.insert(name.clone(), v.clone());
                    }
                }
            }
            let options = serde_json::from_value::<PtqLlmOptions>(recipe)
                .map_err(|e| e.to_string())
                .and_then(|o| o.check().map(|()| o).map_err(|e| error_chain(&e)));
            let axes = picked
                .into_iter()
                .map(|(n, v)| {
                    let text = axis_text(&v);
                    (n, text)
                })
                .collect();
            cells.push(SweepCell { axes, options });
        }
        Ok(cells)
    }
}

/// The axis whose values are tables of recipe fields set together (`grid.case = [{ name =
/// "W3", weight_bits = 3 }, { name = "W4A4 KV4", inputs = "int4_token", kv = "int4" }]`).
pub const CASE_AXIS: &str = "case";

/// How an axis value reads in the table: strings bare, lists joined with `+` (`[]` is
/// `none`), a case by its `name`.
fn axis_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "none".into(),
        Value::Array(items) => items.iter().map(axis_text).collect::<Vec<_>>().join("+"),
        Value::Object(map) => match map.get("name") {
            Some(Value::String(n)) => n.clone(),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// An error with its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        write!(s, ": {x}").expect("writing to a String");
        src = x.source();
    }
    s
}

/// Runs every cell on `session`; `progress(done, total, label)` is called before each cell and
/// `finished(report)` after each, with the report so far (so a long sweep can be written as it
/// goes and a stopped one keeps its finished cells).
pub fn run_sweep(
    session: &mut PtqLlmSession,
    config: &SweepConfig,
    progress: &mut dyn FnMut(usize, usize, &str),
    finished: &mut dyn FnMut(&SweepReport),
) -> Result<SweepReport> {
    let cells = config.cells()?;
    let axes = config.grid.keys().cloned().collect();
    let base = config.base_options()?;
    let fp32 = if base.eval_float {
        Some(session.fp32_row(&base)?)
    } else {
        None
    };
    let total = cells.len();
    let mut report = SweepReport {
        axes,
        fp32,
        results: Vec::with_capacity(total),
    };
    // Cells whose effective recipe is the same (RTN with and without act-order) run once.
    let mut done: Vec<(String, usize)> = vec![];
    for (i, cell) in cells.into_iter().enumerate() {
        let label = match &cell.options {
            Ok(o) => o.label(),
            Err(_) => describe(&cell.axes),
        };
        progress(i, total, &label);
        let key = cell.options.as_ref().ok().and_then(effective_key);
        let earlier = key
            .as_ref()
            .and_then(|k| done.iter().find(|(d, _)| d == k).map(|(_, j)| *j));
        let row = match (&cell.options, earlier) {
            (Err(e), _) => Err(e.clone()),
            (Ok(_), Some(j)) => report.results[j].row.clone(),
            (Ok(o), None) => session
                .run(o, &mut |_| {})
                .map_err(|e| error_chain(&e))
                .and_then(|r| r.rows.last().cloned().ok_or_else(|| "no result row".into())),
        };
        if let (Some(k), None) = (key, earlier) {
            done.push((k, i));
        }
        report.results.push(SweepResult { cell, row });
        finished(&report);
    }
    Ok(report)
}

/// What decides a cell's result: the algorithm as it runs (RTN ignores act-order), the specs
/// and the protocol; two cells with the same key give the same numbers.
fn effective_key(o: &PtqLlmOptions) -> Option<String> {
    Some(format!(
        "{:?}",
        (
            o.algorithm().ok()?,
            o.weight_spec().ok()?,
            o.input_quant().ok()?,
            o.quant_activations(),
            (o.stage1_steps().ok()?, o.kv_quant().ok()?, o.bias_correction),
            (o.calib_windows, o.calib_window, o.seed, o.batch_windows),
            (o.eval_windows, o.kl, &o.export),
        )
    ))
}

fn describe(axes: &[(String, String)]) -> String {
    axes.iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl SweepReport {
    /// A Markdown table: one row per cell (FP32 first), the axis values, perplexity, KL with
    /// its standard error, top-1 agreement, quantization and evaluation time, or the error.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let mut head = self.axes.clone();
        head.extend(
            [
                "perplexity",
                "KL vs FP32",
                "same top-1",
                "stage 1 s",
                "quantize s",
                "eval s",
            ]
            .map(String::from),
        );
        writeln!(out, "| {} |", head.join(" | ")).expect("String");
        writeln!(out, "|{}", "---|".repeat(head.len())).expect("String");
        if let Some(r) = &self.fp32 {
            let mut cells: Vec<String> = self.axes.iter().map(|_| "FP32".into()).collect();
            cells.truncate(1);
            cells.resize(self.axes.len().max(1), String::new());
            cells.extend(row_cells(r));
            writeln!(out, "| {} |", cells.join(" | ")).expect("String");
        }
        for res in &self.results {
            let mut cells: Vec<String> = res.cell.axes.iter().map(|(_, v)| v.clone()).collect();
            match &res.row {
                Ok(r) => cells.extend(row_cells(r)),
                Err(e) => {
                    cells.push(format!("failed: {}", e.replace('|', "/")));
                    cells.extend(["", "", "", "", ""].map(String::from));
                }
            }
            writeln!(out, "| {} |", cells.join(" | ")).expect("String");
        }
        out
    }

    /// CSV with a header: axes, perplexity, kl, kl_stderr, top1, top1_stderr, quantize_s,
    /// eval_s, error.
    pub fn csv(&self) -> String {
        let mut out = String::new();
        let mut head = self.axes.clone();
        head.extend(
            [
                "perplexity",
                "kl",
                "kl_stderr",
                "top1",
                "top1_stderr",
                "stage1_s",
                "quantize_s",
                "eval_s",
                "error",
            ]
            .map(String::from),
        );
        writeln!(out, "{}", head.join(",")).expect("String");
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let fmt_row = |axes: Vec<String>, r: &std::result::Result<PtqLlmRow, String>| {
            let mut cells: Vec<String> = axes.iter().map(|a| quote(a)).collect();
            match r {
                Ok(r) => {
                    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
                    cells.extend([
                        format!("{}", r.perplexity),
                        opt(r.kl.map(|k| k.0)),
                        opt(r.kl.map(|k| k.1)),
                        opt(r.top1.map(|k| k.0)),
                        opt(r.top1.map(|k| k.1)),
                        format!("{:.3}", r.stage1_time.as_secs_f64()),
                        format!("{:.3}", r.quantize_time.as_secs_f64()),
                        format!("{:.3}", r.eval_time.as_secs_f64()),
                        String::new(),
                    ]);
                }
                Err(e) => {
                    cells.extend(std::iter::repeat_n(String::new(), 8));
                    cells.push(quote(e));
                }
            }
            cells.join(",")
        };
        if let Some(r) = &self.fp32 {
            let mut axes = vec!["FP32".to_string()];
            axes.resize(self.axes.len().max(1), String::new());
            axes.truncate(self.axes.len().max(1));
            writeln!(out, "{}", fmt_row(axes, &Ok(r.clone()))).expect("String");
        }
        for res in &self.results {
            let axes = res.cell.axes.iter().map(|(_, v)| v.clone()).collect();
            writeln!(out, "{}", fmt_row(axes, &res.row)).expect("String");
        }
        out
    }

    /// An SVG plot: one horizontal bar per cell for perplexity (log scale, FP32 as a line) and
    /// one for KL divergence, side by side; failed cells are marked.
    pub fn svg(&self) -> String {
        let n = self.results.len();
        let (row_h, top, label_w, panel_w, gap) = (16.0, 40.0, 330.0, 300.0, 40.0);
        let width = label_w + 2.0 * panel_w + 2.0 * gap;
        let height = top + row_h * n as f64 + 30.0;
        let ok: Vec<&PtqLlmRow> = self
            .results
            .iter()
            .filter_map(|r| r.row.as_ref().ok())
            .collect();
        let ppl_max = ok
            .iter()
            .map(|r| r.perplexity)
            .chain(self.fp32.iter().map(|r| r.perplexity))
            .fold(1.0f64, f64::max);
        let ppl_min = self
            .fp32
            .as_ref()
            .map_or(1.0, |r| r.perplexity * 0.9)
            .max(1.0);
        let kl_max = ok
            .iter()
            .filter_map(|r| r.kl.map(|k| k.0 + k.1))
            .fold(0.0f64, f64::max)
            .max(1e-6);
        let lx = |p: f64| {
            let (a, b) = (ppl_min.ln(), (ppl_max * 1.05).ln());
            label_w + panel_w * ((p.max(ppl_min).ln() - a) / (b - a).max(1e-9))
        };
        let kx = |k: f64| label_w + panel_w + gap + panel_w * (k / (kl_max * 1.05));
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut s = String::new();
        writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
        )
        .expect("String");
        writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#).expect("String");
        writeln!(
            s,
            r#"<text x="{}" y="16" font-weight="bold">perplexity (log scale{})</text><text x="{}" y="16" font-weight="bold">KL divergence from FP32 (nats/token, ± s.e.)</text>"#,
            label_w,
            self.fp32
                .as_ref()
                .map_or(String::new(), |r| format!(", FP32 {:.3} dashed", r.perplexity)),
            label_w + panel_w + gap
        )
        .expect("String");
        for (i, res) in self.results.iter().enumerate() {
            let y = top + row_h * i as f64;
            let label = match &res.cell.options {
                Ok(o) => o.label(),
                Err(_) => describe(&res.cell.axes),
            };
            writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                label_w - 6.0,
                y + row_h * 0.75,
                esc(&label)
            )
            .expect("String");
            match &res.row {
                Ok(r) => {
                    writeln!(
                        s,
                        r##"<rect x="{label_w}" y="{}" width="{:.1}" height="{}" fill="#4878cf"/><text x="{:.1}" y="{}">{:.2}</text>"##,
                        y + 2.0,
                        (lx(r.perplexity) - label_w).max(0.5),
                        row_h - 4.0,
                        lx(r.perplexity) + 3.0,
                        y + row_h * 0.75,
                        r.perplexity
                    )
                    .expect("String");
                    if let Some((k, e)) = r.kl {
                        let x0 = label_w + panel_w + gap;
                        writeln!(
                            s,
                            r##"<rect x="{x0}" y="{}" width="{:.1}" height="{}" fill="#d65f5f"/><line x1="{:.1}" x2="{:.1}" y1="{}" y2="{}" stroke="black"/><text x="{:.1}" y="{}">{:.4}</text>"##,
                            y + 2.0,
                            (kx(k) - x0).max(0.5),
                            row_h - 4.0,
                            kx((k - e).max(0.0)),
                            kx(k + e),
                            y + row_h / 2.0,
                            y + row_h / 2.0,
                            kx(k + e) + 3.0,
                            y + row_h * 0.75,
                            k
                        )
                        .expect("String");
                    }
                }
                Err(_) => {
                    writeln!(
                        s,
                        r##"<text x="{}" y="{}" fill="#b00">failed (see the table)</text>"##,
                        label_w + 4.0,
                        y + row_h * 0.75
                    )
                    .expect("String");
                }
            }
        }
        if let Some(r) = &self.fp32 {
            let x = lx(r.perplexity);
            writeln!(
                s,
                r#"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{}" stroke="black" stroke-dasharray="4 3"/>"#,
                top + row_h * n as f64
            )
            .expect("String");
        }
        writeln!(s, "</svg>").expect("String");
        s
    }

    /// Writes `sweep.md`, `sweep.csv` and `sweep.svg` into `dir` (created if needed), each
    /// atomically; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
            what: dir.display().to_string(),
            source,
        })?;
        let mut paths = vec![];
        for (name, text) in [
            ("sweep.md", self.markdown()),
            ("sweep.csv", self.csv()),
            ("sweep.svg", self.svg()),
        ] {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            let io = |source| CliError::Io {
                what: path.display().to_string(),
                source,
            };
            std::fs::write(&tmp, text).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            paths.push(path);
        }
        Ok(paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(text: &str) -> SweepConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_grid_is_the_product_of_its_axes_and_bad_cells_keep_their_error() {
        let c = config(
            "[base]\ngroup_size = 64\n[grid]\nalgo = [\"rtn\", \"gptq\"]\nweight_bits = [4, 3]\nstatic_groups = [false]\n",
        );
        let cells = c.cells().unwrap();
        assert_eq!(cells.len(), 4);
        let names: Vec<String> = cells.iter().map(|c| describe(&c.axes)).collect();
        assert_eq!(
            names,
            [
                "algo=rtn static_groups=false weight_bits=4",
                "algo=rtn static_groups=false weight_bits=3",
                "algo=gptq static_groups=false weight_bits=4",
                "algo=gptq static_groups=false weight_bits=3",
            ]
        );
        // RTN's groups are always static: those cells are invalid, the others carry the base.
        assert!(
            cells[0]
                .options
                .as_ref()
                .unwrap_err()
                .contains("static_groups")
        );
        let o = cells[3].options.as_ref().unwrap();
        assert_eq!(
            (o.group_size, o.weight_bits, o.static_groups, o.eval_float),
            (Some(64), Some(3), Some(false), false)
        );
        // Unknown axes are cell errors naming the field; malformed axes fail the sweep.
        let cells = config("[grid]\nweight_bitz = [4]\n").cells().unwrap();
        assert!(
            cells[0]
                .options
                .as_ref()
                .unwrap_err()
                .contains("weight_bitz")
        );
        assert!(config("[grid]\nalgo = \"rtn\"\n").cells().is_err());
        assert!(config("[grid]\nalgo = []\n").cells().is_err());
        assert!(toml::from_str::<SweepConfig>("[grud]\n").is_err());
        // A base that is not a recipe fails the sweep instead of falling back to defaults.
        let e = config("[base]\nweight_bitz = 3\n")
            .base_options()
            .unwrap_err();
        assert!(e.to_string().contains("base"), "{e}");
    }

    /// RTN ignores act-order, so those two cells share one run; GPTQ's differ.
    /// A `case` axis sets several fields at once and is labelled by its name; a Stage 1 list
    /// is an axis like any other (`[]` reads `none`), and it is part of a cell's key.
    #[test]
    fn cases_and_stage1_lists_are_axes() {
        let c = config(
            "[base]\nweight_bits = 3\n[grid]\nstage1 = [[], [\"smoothquant\"], [\"hip\", \"rotate_qk\"]]\ncase = [{ name = \"W3\" }, { name = \"W4A4 KV4\", weight_bits = 4, inputs = \"int4_token\", kv = \"int4\" }]\n",
        );
        let cells = c.cells().unwrap();
        assert_eq!(cells.len(), 6);
        // Axes in alphabetical order: case, then stage1 (fastest).
        let labels: Vec<String> = cells.iter().map(|c| describe(&c.axes)).collect();
        assert_eq!(labels[0], "case=W3 stage1=none");
        assert_eq!(labels[5], "case=W4A4 KV4 stage1=hip+rotate_qk");
        let o = cells[5].options.as_ref().unwrap();
        assert_eq!(o.weight_bits, Some(4));
        assert!(o.kv_quant().unwrap().is_some());
        assert_eq!(o.stage1_steps().unwrap().len(), 2);
        assert_eq!(cells[0].options.as_ref().unwrap().weight_bits, Some(3));
        let keys: Vec<String> = cells
            .iter()
            .map(|c| effective_key(c.options.as_ref().unwrap()).unwrap())
            .collect();
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
        // A case with a field the recipe does not have is a failed cell, not a panic.
        let bad = config("[grid]\ncase = [{ name = \"x\", wieght_bits = 3 }]\n");
        assert!(bad.cells().unwrap()[0].options.is_err());
    }

    /// Every sweep file behind a book table parses, and every one of its cells is a valid
    /// recipe (a typo in a book sweep would otherwise surface as failed cells an hour in).
    #[test]
    fn the_book_sweeps_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../book/sweeps");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let c = SweepConfig::from_file(&path).unwrap();
            c.base_options().unwrap();
            for cell in c.cells().unwrap() {
                if let Err(e) = &cell.options {
                    panic!("{}: {}: {e}", path.display(), describe(&cell.axes));
                }
            }
            files += 1;
        }
        assert!(files >= 4, "{files} sweep files in {}", dir.display());
    }

    #[test]
    fn cells_with_the_same_effective_recipe_share_a_key() {
        let cells = config("[grid]\nalgo = [\"rtn\", \"gptq\"]\nact_order = [false, true]\n")
            .cells()
            .unwrap();
        let keys: Vec<String> = cells
            .iter()
            .map(|c| effective_key(c.options.as_ref().unwrap()).unwrap())
            .collect();
        // Order: act_order=false/rtn, false/gptq, true/rtn, true/gptq.
        assert_eq!(keys[0], keys[2]);
        assert_ne!(keys[1], keys[3]);
        assert_ne!(keys[0], keys[1]);
    }

    #[test]
    fn reports_write_table_csv_and_svg_with_failed_cells() {
        let c = config("[grid]\nalgo = [\"rtn\", \"nope\"]\n");
        let cells = c.cells().unwrap();
        let row = |label: &str, ppl: f64| PtqLlmRow {
            label: label.into(),
            perplexity: ppl,
            quantize_time: Duration::from_millis(1500),
            eval_time: Duration::from_secs(3),
            weight_bytes: 1e6,
            kl: Some((0.25, 0.01)),
            top1: Some((0.8, 0.004)),
            stage1_time: Duration::from_millis(250),
        };
        let report = SweepReport {
            axes: vec!["algo".into()],
            fp32: Some(row("FP32", 20.0)),
            results: vec![
                SweepResult {
                    cell: cells[0].clone(),
                    row: Ok(row("rtn", 31.5)),
                },
                SweepResult {
                    cell: cells[1].clone(),
                    row: Err(cells[1].options.clone().unwrap_err()),
                },
            ],
        };
        let md = report.markdown();
        assert!(
            md.contains("| rtn | 31.500 | 0.2500 ± 0.0100 | 80.00 % | 0.2 | 1.5 | 3.0 |"),
            "{md}"
        );
        assert!(md.contains("| nope | failed: "), "{md}");
        let csv = report.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("algo,perplexity,kl,"));
        assert!(
            lines[2].starts_with("\"rtn\",31.5,0.25,0.01,0.8,"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].contains("algo"),
            "the error names the field: {}",
            lines[3]
        );
        let svg = report.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("31.50") && svg.contains("failed"));
        let dir = std::env::temp_dir().join(format!("burnq-sweep-{}", std::process::id()));
        let paths = report.write(&dir).unwrap();
        assert_eq!(paths.len(), 3);
        assert_eq!(std::fs::read_to_string(&paths[1]).unwrap(), csv);
        std::fs::remove_dir_all(&dir).ok();
    }
}

fn row_cells(r: &PtqLlmRow) -> Vec<String> {
    vec![
        format!("{:.3}", r.perplexity),
        r.kl.map_or("-".into(), |(k, e)| format!("{k:.4} ± {e:.4}")),
        r.top1
            .map_or("-".into(), |(p, _)| format!("{:.2} %", 100.0 * p)),
        format!("{:.1}", r.stage1_time.as_secs_f64()),
        format!("{:.1}", r.quantize_time.as_secs_f64()),
        format!("{:.1}", r.eval_time.as_secs_f64()),
    ]
}
