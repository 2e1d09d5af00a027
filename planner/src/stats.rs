//! The statistics of the benchmark, free of files so they can be tested on
//! their own: means with 95 % confidence intervals over seeds, the
//! hypervolume of a front, and a paired bootstrap over test images.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The 97.5 % quantile of Student's t with `df` degrees of freedom (the
/// half-width of a two-sided 95 % interval, in standard errors); the
/// normal 1.96 past 30.
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

/// Mean and the half-width of its 95 % confidence interval (Student's t
/// over the values; NaN half-width for fewer than two values). Non-finite
/// values are left out.
pub fn mean_ci(xs: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, f64::NAN);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, t975(n - 1) * (var / n as f64).sqrt())
}

/// The hypervolume of a set of plans in (cost, accuracy): the area of the
/// region some plan dominates — cost at least the plan's, up to `cost_ref`;
/// accuracy at most the plan's, down to `acc_ref` — in accuracy × cost
/// units. Plans dearer than `cost_ref` or below `acc_ref` add nothing. A
/// front that reaches higher accuracy at lower cost has more.
pub fn hypervolume(points: &[(f64, f64)], cost_ref: f64, acc_ref: f64) -> f64 {
    let mut p: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|&(c, a)| c.is_finite() && a.is_finite() && c < cost_ref && a > acc_ref)
        .collect();
    p.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Sweep by cost: between consecutive costs the best accuracy so far
    // sets the height.
    let mut area = 0.0;
    let mut best = acc_ref;
    for (i, &(c, a)) in p.iter().enumerate() {
        best = best.max(a);
        let next = p.get(i + 1).map_or(cost_ref, |q| q.0);
        area += (next - c) * (best - acc_ref);
    }
    area
}

/// A paired bootstrap over images: `a[s]` and `b[s]` say, for seed `s`,
/// which test images two plans classify correctly (same images, same
/// order). Resamples the images `reps` times (the same draw for every
/// seed) and returns the mean over seeds of accuracy(a) − accuracy(b),
/// with the 2.5 % and 97.5 % quantiles of its bootstrap distribution.
/// Seeds whose vectors are empty or of unequal length are left out.
pub fn paired_bootstrap(
    a: &[Vec<bool>],
    b: &[Vec<bool>],
    reps: usize,
    seed: u64,
) -> (f64, f64, f64) {
    let pairs: Vec<(&Vec<bool>, &Vec<bool>)> =
        a.iter().zip(b).filter(|(x, y)| !x.is_empty() && x.len() == y.len()).collect();
    if pairs.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = pairs[0].0.len();
    if pairs.iter().any(|(x, _)| x.len() != n) {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    // Per image, the summed difference over seeds: −s..s.
    let d: Vec<i32> = (0..n)
        .map(|i| pairs.iter().map(|(x, y)| i32::from(x[i]) - i32::from(y[i])).sum())
        .collect();
    let scale = 1.0 / (n as f64 * pairs.len() as f64);
    let mean = d.iter().map(|&v| v as f64).sum::<f64>() * scale;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draws: Vec<f64> = (0..reps.max(1))
        .map(|_| (0..n).map(|_| d[rng.gen_range(0..n)] as f64).sum::<f64>() * scale)
        .collect();
    draws.sort_by(f64::total_cmp);
    let q = |p: f64| draws[((draws.len() - 1) as f64 * p).round() as usize];
    (mean, q(0.025), q(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_ci_uses_students_t() {
        let (m, h) = mean_ci(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12);
        // sd 1, n 3: 4.303 / √3.
        assert!((h - 4.303 / 3f64.sqrt()).abs() < 1e-9, "{h}");
        assert!(mean_ci(&[5.0]).1.is_nan());
        assert!(mean_ci(&[]).0.is_nan());
        assert_eq!(mean_ci(&[1.0, f64::NAN, 1.0]), (1.0, 0.0));
        assert_eq!(t975(100), 1.96);
    }

    #[test]
    fn hypervolume_of_simple_fronts() {
        // One plan at cost 0.5, accuracy 0.9; reference (1, 0.8): 0.5 × 0.1.
        assert!((hypervolume(&[(0.5, 0.9)], 1.0, 0.8) - 0.05).abs() < 1e-12);
        // A dominated plan adds nothing; a better one adds its part.
        let one = hypervolume(&[(0.5, 0.9), (0.6, 0.85)], 1.0, 0.8);
        assert!((one - 0.05).abs() < 1e-12);
        let two = hypervolume(&[(0.5, 0.9), (0.2, 0.85)], 1.0, 0.8);
        assert!((two - (0.05 + 0.3 * 0.05)).abs() < 1e-12, "{two}");
        // Outside the reference: nothing.
        assert_eq!(hypervolume(&[(1.2, 0.95), (0.1, 0.7)], 1.0, 0.8), 0.0);
        assert_eq!(hypervolume(&[], 1.0, 0.8), 0.0);
    }

    #[test]
    fn paired_bootstrap_finds_a_real_difference_and_not_a_fake_one() {
        let mut r = ChaCha8Rng::seed_from_u64(3);
        let n = 4000;
        let base: Vec<bool> = (0..n).map(|_| r.gen_bool(0.85)).collect();
        // b = a with 3 % of the images flipped to wrong.
        let worse: Vec<bool> = base.iter().enumerate().map(|(i, &x)| x && i % 33 != 0).collect();
        let (m, lo, hi) = paired_bootstrap(std::slice::from_ref(&base), &[worse], 500, 1);
        assert!(m > 0.0 && lo > 0.0 && hi >= m, "{m} {lo} {hi}");
        let (m, lo, hi) =
            paired_bootstrap(std::slice::from_ref(&base), std::slice::from_ref(&base), 200, 1);
        assert_eq!((m, lo, hi), (0.0, 0.0, 0.0));
        // Two independent draws of the same accuracy: the interval holds 0.
        let other: Vec<bool> = (0..n).map(|_| r.gen_bool(0.85)).collect();
        let (_, lo, hi) = paired_bootstrap(&[base], &[other], 500, 1);
        assert!(lo < 0.0 && hi > 0.0, "{lo} {hi}");
        assert!(paired_bootstrap(&[vec![true]], &[vec![]], 10, 1).0.is_nan());
    }
}
