//! The dashboard's activity chart as plain SVG geometry, computed here so the template only
//! places rectangles: no JavaScript, no external library.

use serde::Serialize;

use crate::admin::HourlyActivity;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 220;
const TOP: u32 = 10;
const BOTTOM: u32 = 30;
const LEFT: u32 = 40;

#[derive(Serialize)]
pub struct Bar {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    pub class: &'static str,
    pub title: String,
}

#[derive(Serialize)]
pub struct Label {
    pub x: u32,
    pub text: String,
}

#[derive(Serialize)]
pub struct Chart {
    pub width: u32,
    pub height: u32,
    pub baseline: u32,
    pub max: i64,
    pub bars: Vec<Bar>,
    pub labels: Vec<Label>,
    /// The same numbers as a table, for screen readers and for copying.
    pub rows: Vec<(String, i64, i64, i64)>,
}

pub fn chart(hours: &[HourlyActivity]) -> Chart {
    let max = hours
        .iter()
        .flat_map(|h| [h.logins, h.refreshes_ok + h.refreshes_failed])
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_height = HEIGHT - TOP - BOTTOM;
    let baseline = HEIGHT - BOTTOM;
    let slot = (WIDTH - LEFT) / hours.len().max(1) as u32;
    let bar_width = (slot.saturating_sub(4) / 2).max(1);
    let scale = |v: i64| ((v as f64 / max as f64) * f64::from(plot_height)).round() as u32;
    let mut bars = Vec::new();
    let mut labels = Vec::new();
    let mut rows = Vec::new();
    for (i, h) in hours.iter().enumerate() {
        let x = LEFT + i as u32 * slot + 2;
        let hour = h.hour.format("%H:00").to_string();
        let refreshes = h.refreshes_ok + h.refreshes_failed;
        let login_height = scale(h.logins);
        bars.push(Bar {
            x,
            y: baseline - login_height,
            width: bar_width,
            height: login_height,
            class: "logins",
            title: format!("{hour}: {} logins", h.logins),
        });
        // Refreshes: failures stacked on top of successes.
        let ok_height = scale(h.refreshes_ok);
        let failed_height = scale(refreshes) - ok_height.min(scale(refreshes));
        bars.push(Bar {
            x: x + bar_width,
            y: baseline - ok_height,
            width: bar_width,
            height: ok_height,
            class: "refreshes",
            title: format!("{hour}: {} refreshes succeeded", h.refreshes_ok),
        });
        if failed_height > 0 {
            bars.push(Bar {
                x: x + bar_width,
                y: baseline - ok_height - failed_height,
                width: bar_width,
                height: failed_height,
                class: "failures",
                title: format!("{hour}: {} refreshes failed", h.refreshes_failed),
            });
        }
        if i % 3 == 0 {
            labels.push(Label {
                x,
                text: hour.clone(),
            });
        }
        rows.push((hour, h.logins, h.refreshes_ok, h.refreshes_failed));
    }
    Chart {
        width: WIDTH,
        height: HEIGHT,
        baseline,
        max,
        bars,
        labels,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};

    #[test]
    fn bars_scale_to_the_largest_value_and_stay_inside() {
        let now = Utc::now();
        let hours: Vec<HourlyActivity> = (0..24)
            .map(|i| HourlyActivity {
                hour: now - Duration::hours(23 - i),
                logins: i,
                refreshes_ok: 2 * i,
                refreshes_failed: i64::from(i == 23) * 10,
            })
            .collect();
        let c = chart(&hours);
        assert_eq!(c.max, 56);
        assert_eq!(c.rows.len(), 24);
        let tallest = c
            .bars
            .iter()
            .map(|b| b.baseline_top(c.baseline))
            .max()
            .unwrap();
        assert_eq!(
            tallest,
            c.baseline - TOP,
            "the largest stack fills the plot"
        );
        assert!(c.bars.iter().all(|b| b.x + b.width <= WIDTH && b.y >= TOP));
        assert_eq!(c.bars.iter().filter(|b| b.class == "failures").count(), 1);
    }

    #[test]
    fn an_idle_day_draws_no_bars_and_does_not_divide_by_zero() {
        let hours: Vec<HourlyActivity> = (0..24)
            .map(|i| HourlyActivity {
                hour: Utc::now() - Duration::hours(i),
                logins: 0,
                refreshes_ok: 0,
                refreshes_failed: 0,
            })
            .collect();
        let c = chart(&hours);
        assert!(c.bars.iter().all(|b| b.height == 0));
    }

    impl Bar {
        fn baseline_top(&self, baseline: u32) -> u32 {
            baseline - self.y
        }
    }
}
