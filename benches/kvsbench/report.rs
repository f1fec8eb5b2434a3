//! The end of a run: the summary table on stdout, a JSON file with everything, and an SVG
//! plot: one row per kind of phase (writes, reads, reclaim, other) with its latency
//! distributions, its throughput over time, and a legend beside them.

use std::path::Path;

use kvs::flags::format_bytes;
use plotters::prelude::*;
use serde_json::json;

use crate::measure::Phase;

/// CPU, memory, and the device and file system under `dir`.
pub fn machine_description(dir: &Path) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(|| "?".into(), |kb| format_bytes(kb * 1024));
    let fs = nix::sys::statfs::statfs(dir)
        .map(|s| format!("{:?}", s.filesystem_type()))
        .unwrap_or_else(|_| "?".into());
    format!(
        "{cpus} CPUs, {mem} memory, store on {} (fs {fs})",
        dir.display()
    )
}

/// One line per phase while the run goes on.
pub fn one_line(p: &Phase) -> String {
    let vs = p.baseline.as_ref().map_or(String::new(), |(b, r)| {
        format!(", {:.0}% of {b}", r * 100.0)
    });
    format!(
        "{:<22} {:>9} ops {:>8.1} s {:>10.0} ops/s {:>8.1} MB/s  p50 {:>8.0} us  p99 {:>8.0} us{vs}",
        p.name,
        p.ops,
        p.secs,
        p.ops_per_sec(),
        p.mb_per_sec(),
        p.lat_us(0.5),
        p.lat_us(0.99)
    )
}

pub fn finish(
    dir: &Path,
    machine: &str,
    phases: &[Phase],
    summary: &[(String, String)],
    args: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!();
    println!("kvsbench summary ({machine})");
    println!(
        "{:<22} {:>3} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "phase",
        "thr",
        "ops",
        "ops/s",
        "MB/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "dev rd MB",
        "dev wr MB",
        "vs raw",
        "cpu us/op"
    );
    for p in phases {
        println!(
            "{:<22} {:>3} {:>9} {:>10.0} {:>9.1} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>7} {:>9.1}",
            p.name,
            p.threads,
            p.ops,
            p.ops_per_sec(),
            p.mb_per_sec(),
            p.lat_us(0.5),
            p.lat_us(0.9),
            p.lat_us(0.99),
            p.lat_us(0.999),
            p.max_us(),
            p.io.read as f64 / 1e6,
            p.io.write as f64 / 1e6,
            p.baseline.as_ref().map_or("".into(), |(_, r)| format!("{:.0}%", r * 100.0)),
            p.cpu_us_per_op(),
        );
    }
    println!();
    for p in phases
        .iter()
        .filter(|p| !p.notes.is_empty() || p.baseline.is_some())
    {
        let base = p.baseline.as_ref().map_or(String::new(), |(b, r)| {
            format!("{:.0}% of {b}; ", r * 100.0)
        });
        println!("  {}: {base}{}", p.name, p.notes.join("; "));
    }
    println!();
    for (k, v) in summary {
        println!("  {k:<32} {v}");
    }

    let json = json!({
        "machine": machine,
        "args": args,
        "phases": phases.iter().map(|p| json!({
            "name": p.name,
            "threads": p.threads,
            "ops": p.ops,
            "seconds": p.secs,
            "ops_per_sec": p.ops_per_sec(),
            "mb_per_sec": p.mb_per_sec(),
            "mib_per_sec": p.mib_per_sec(),
            "latency_us": {
                "mean": p.mean_us(), "p50": p.lat_us(0.5), "p90": p.lat_us(0.9),
                "p99": p.lat_us(0.99), "p99_9": p.lat_us(0.999), "max": p.max_us(),
            },
            "device_read_bytes": p.io.read,
            "device_write_bytes": p.io.write,
            "cpu_us_per_op": p.cpu_us_per_op(),
            "baseline": p.baseline.as_ref().map(|(b, r)| json!({"phase": b, "ratio": r})),
            "notes": p.notes,
            "timeline_mb_per_sec": p.timeline,
        })).collect::<Vec<_>>(),
        "summary": summary.iter().map(|(k, v)| json!({"what": k, "value": v})).collect::<Vec<_>>(),
    });
    let json_path = dir.join("report.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", json_path.display()))?;
    let svg_path = dir.join("report.svg");
    plot(&svg_path, phases).map_err(|e| format!("plot: {e}"))?;
    println!();
    println!(
        "  report: {}  plot: {}",
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// The kinds of phase, one row of the plot each, with the raw baseline they compare with.
const KINDS: [(&str, &[&str]); 4] = [
    (
        "writes",
        &[
            "raw-write",
            "fill",
            "overwrite",
            "write-with",
            "commit",
            "raw-commit",
            "delete",
        ],
    ),
    ("reads", &["raw-read", "read-", "get-", "mixed", "list"]),
    ("reclaim", &["reclaim", "raw-mixed"]),
    ("other", &[""]),
];

/// Ten colours that tell lines apart (Tableau 10); a row holds few series.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One row per kind of phase (writes, reads, reclaim, other): latency by percentile (x in
/// "nines": 0 = p0, 1 = p90, 2 = p99, 3 = p99.9), log-scaled, and MB/s over the run's
/// time, with the row's legend beside the charts (it covers no data). Lines past ten in a
/// row repeat colours, dashed.
fn plot(path: &Path, phases: &[Phase]) -> Result<(), Box<dyn std::error::Error>> {
    let mut rows: Vec<(&str, Vec<&Phase>)> = Vec::new();
    let mut placed = vec![false; phases.len()];
    for (kind, prefixes) in KINDS {
        let mut row = Vec::new();
        for (i, p) in phases.iter().enumerate() {
            if !placed[i] && prefixes.iter().any(|x| p.name.starts_with(x)) {
                placed[i] = true;
                row.push(p);
            }
        }
        if !row.is_empty() {
            rows.push((kind, row));
        }
    }
    let height = 420 * rows.len().max(1) as u32;
    let root = SVGBackend::new(path, (1500, height)).into_drawing_area();
    root.fill(&WHITE)?;
    for ((kind, row), area) in rows.iter().zip(root.split_evenly((rows.len().max(1), 1))) {
        let (charts, legend) = area.split_horizontally(1180);
        let (left, right) = charts.split_horizontally(590);
        latency_chart(&left, kind, row)?;
        throughput_chart(&right, kind, row)?;
        draw_legend(&legend, row)?;
    }
    root.present()?;
    Ok(())
}

fn style(i: usize) -> (RGBColor, bool) {
    (COLOURS[i % COLOURS.len()], i >= COLOURS.len())
}

/// A line of series `i`: solid, or dashed once the colours repeat.
fn line(i: usize, pts: Vec<(f64, f64)>) -> Box<dyn Iterator<Item = PathElement<(f64, f64)>>> {
    let (c, dashed) = style(i);
    if !dashed {
        return Box::new(std::iter::once(PathElement::new(pts, c.stroke_width(2))));
    }
    let segs: Vec<PathElement<(f64, f64)>> = pts
        .windows(2)
        .step_by(2)
        .map(|w| PathElement::new(w.to_vec(), c.stroke_width(2)))
        .collect();
    Box::new(segs.into_iter())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn latency_chart(
    area: &Area<'_>,
    kind: &str,
    row: &[&Phase],
) -> Result<(), Box<dyn std::error::Error>> {
    let max_lat = row.iter().map(|p| p.max_us()).fold(10.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{kind}: latency by percentile (us, log)"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4f64, (0.1f64..max_lat * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("0 = p0, 1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99")
        .y_desc("us")
        .draw()?;
    for (i, p) in row.iter().enumerate() {
        let pts: Vec<(f64, f64)> = (0..=80)
            .map(|j| {
                let x = j as f64 / 20.0;
                let q = 1.0 - 10f64.powf(-x);
                (x, p.lat_us(q.min(0.99999)).max(0.1))
            })
            .collect();
        chart.draw_series(line(i, pts))?;
    }
    Ok(())
}

fn throughput_chart(
    area: &Area<'_>,
    kind: &str,
    row: &[&Phase],
) -> Result<(), Box<dyn std::error::Error>> {
    let times = row.iter().flat_map(|p| p.timeline.iter().map(|t| t.0));
    let t_min = times.clone().fold(f64::INFINITY, f64::min);
    let t_max = times.fold(0.0, f64::max);
    let (t_min, t_max) = if t_min < t_max {
        (t_min, t_max)
    } else {
        (0.0, 1.0)
    };
    let r_max = row
        .iter()
        .flat_map(|p| p.timeline.iter().map(|t| t.1))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{kind}: throughput over time (MB/s)"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(t_min..t_max, 0f64..r_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the run started")
        .y_desc("MB/s")
        .draw()?;
    for (i, p) in row.iter().enumerate() {
        if p.timeline.len() > 1 {
            chart.draw_series(line(i, p.timeline.clone()))?;
        }
    }
    Ok(())
}

/// The row's legend: a sample of each line and the phase's name, one per line of text.
fn draw_legend(area: &Area<'_>, row: &[&Phase]) -> Result<(), Box<dyn std::error::Error>> {
    for (i, p) in row.iter().enumerate() {
        let y = 40 + 22 * i as i32;
        let (c, dashed) = style(i);
        let dash = if dashed { 10 } else { 30 };
        area.draw(&PathElement::new(
            vec![(10, y), (10 + dash, y)],
            c.stroke_width(3),
        ))?;
        area.draw(&Text::new(
            p.name.clone(),
            (48, y - 7),
            ("sans-serif", 14).into_font(),
        ))?;
    }
    Ok(())
}
