//! The end of a run: the summary table on stdout, a JSON file with everything, and an SVG
//! plot (latency distribution per phase, throughput over time).

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
        "{:<22} {:>3} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
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
        "vs raw"
    );
    for p in phases {
        println!(
            "{:<22} {:>3} {:>9} {:>10.0} {:>9.1} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>7}",
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

/// Two charts: latency by percentile (x in "nines": 0 = p0, 1 = p90, 2 = p99, 3 = p99.9)
/// per phase, log-scaled; and MB/s over the run's time, one series per phase.
fn plot(path: &Path, phases: &[Phase]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1200, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(500);
    let max_lat = phases.iter().map(|p| p.max_us()).fold(10.0, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .caption("latency by percentile (us, log scale)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4f64, (0.1f64..max_lat * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile: 0 = p0, 1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99")
        .y_desc("us")
        .draw()?;
    for (i, p) in phases.iter().enumerate() {
        let color = Palette99::pick(i).stroke_width(2);
        let pts: Vec<(f64, f64)> = (0..=80)
            .map(|j| {
                let x = j as f64 / 20.0;
                let q = 1.0 - 10f64.powf(-x);
                (x, p.lat_us(q.min(0.99999)).max(0.1))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color))?
            .label(p.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], Palette99::pick(i)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let t_max = phases
        .iter()
        .flat_map(|p| p.timeline.iter().map(|t| t.0))
        .fold(1.0, f64::max);
    let r_max = phases
        .iter()
        .flat_map(|p| p.timeline.iter().map(|t| t.1))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .caption("throughput over time (MB/s)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..r_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("MB/s")
        .draw()?;
    for (i, p) in phases
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.timeline.is_empty())
    {
        chart
            .draw_series(LineSeries::new(
                p.timeline.clone(),
                Palette99::pick(i).stroke_width(2),
            ))?
            .label(p.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], Palette99::pick(i)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
