//! Summary statistics of a set of samples: median, p95, min, max, quartiles and standard
//! deviation. Pure arithmetic; it knows nothing about what was measured or how.

use serde::{Deserialize, Serialize};

/// The summary of one operation's samples (all in the samples' unit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
    /// First quartile (25th percentile).
    pub q1: f64,
    /// Third quartile (75th percentile).
    pub q3: f64,
    /// Interquartile range, `q3 - q1`.
    pub iqr: f64,
    pub mean: f64,
    /// Sample standard deviation (0 for a single sample).
    pub stdev: f64,
}

/// The `p`-th percentile (0..=100) of sorted samples, interpolating linearly between the two
/// nearest ranks.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// Summarises samples; `None` when there are none (or none is a finite number).
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let mean = s.iter().sum::<f64>() / n as f64;
    let stdev = if n > 1 {
        (s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    let q1 = percentile(&s, 25.0);
    let q3 = percentile(&s, 75.0);
    Some(Summary {
        n,
        median: percentile(&s, 50.0),
        p95: percentile(&s, 95.0),
        min: s[0],
        max: s[n - 1],
        q1,
        q3,
        iqr: q3 - q1,
        mean,
        stdev,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_medians_and_quartiles() {
        let s = summarize(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 3.0, 1.0, 5.0));
        assert_eq!((s.q1, s.q3, s.iqr), (2.0, 4.0, 2.0));
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!(s.mean, 2.5);
    }

    #[test]
    fn p95_interpolates_towards_the_largest() {
        let samples: Vec<f64> = (1..=21).map(f64::from).collect();
        let s = summarize(&samples).unwrap();
        assert_eq!(s.p95, 20.0);
        assert_eq!(s.median, 11.0);
        let s = summarize(&[10.0, 20.0]).unwrap();
        assert!((s.p95 - 19.5).abs() < 1e-9);
    }

    #[test]
    fn stdev_is_the_sample_deviation() {
        let s = summarize(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert!((s.stdev - 2.138_089_935).abs() < 1e-6, "{}", s.stdev);
        assert_eq!(summarize(&[7.0]).unwrap().stdev, 0.0);
    }

    #[test]
    fn empty_and_non_finite_samples() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[f64::NAN]), None);
        assert_eq!(summarize(&[f64::NAN, 3.0]).unwrap().n, 1);
    }
}
