//! Metric series kept in bounded memory, and the pure functions that turn them into chart
//! lines: TensorBoard's debiased EMA and spike-preserving min/max decimation.
//!
//! A [`Series`] stores buckets, not raw points. Each bucket keeps the count, sum, min, max and
//! last value of the points folded into it. Until `cap` buckets exist each holds one point;
//! past that, neighbours are merged pairwise and later buckets take twice as many points
//! (Burn's full-history halving, but keeping min/max so a spike survives any amount of
//! merging). A run of any length therefore costs at most `cap` buckets per metric, and a frame
//! never looks at more than `cap` buckets per line.

/// Buckets kept per metric. At least four times the braille resolution of the widest chart
/// (a 160-column terminal gives charts under 300 dots across), so decimation to the screen
/// still has several buckets per dot after a merge; 2048 x 72 bytes = 144 KiB per metric.
pub const DEFAULT_CAP: usize = 2048;

/// What the x axis shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XAxis {
    #[default]
    Step,
    /// Seconds since the run started.
    WallTime,
}

/// Points folded together: their step and wall-time span and value summary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub step0: f64,
    pub step1: f64,
    pub wall0: f64,
    pub wall1: f64,
    pub count: u32,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub last: f64,
}

impl Bucket {
    fn single(step: f64, wall: f64, v: f64) -> Self {
        Self {
            step0: step,
            step1: step,
            wall0: wall,
            wall1: wall,
            count: 1,
            sum: v,
            min: v,
            max: v,
            last: v,
        }
    }

    fn absorb(&mut self, o: &Bucket) {
        self.step1 = o.step1;
        self.wall1 = o.wall1;
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.last = o.last;
    }

    pub fn mean(&self) -> f64 {
        self.sum / f64::from(self.count.max(1))
    }

    /// The bucket's position on an axis: the middle of its span.
    pub fn x(&self, axis: XAxis) -> f64 {
        match axis {
            XAxis::Step => 0.5 * (self.step0 + self.step1),
            XAxis::WallTime => 0.5 * (self.wall0 + self.wall1),
        }
    }

    /// Whether this bucket holds more than one point (readouts then show a range).
    pub fn is_merged(&self) -> bool {
        self.count > 1
    }
}

/// One metric of one run, in at most `cap` buckets.
#[derive(Clone, Debug)]
pub struct Series {
    buckets: Vec<Bucket>,
    cap: usize,
    /// Points per bucket for new points; doubles at each merge.
    span: u32,
    points: u64,
    non_finite: u64,
    last: Option<(f64, f64)>,
}

impl Default for Series {
    fn default() -> Self {
        Self::with_cap(DEFAULT_CAP)
    }
}

impl Series {
    /// A series that keeps at most `cap` buckets (at least 2).
    pub fn with_cap(cap: usize) -> Self {
        Self {
            buckets: Vec::new(),
            cap: cap.max(2),
            span: 1,
            points: 0,
            non_finite: 0,
            last: None,
        }
    }

    /// Adds a point. Non-finite values are counted (the Health pane reports them) but not
    /// stored: they cannot be drawn and would poison min/max and smoothing.
    pub fn push(&mut self, step: f64, wall: f64, v: f64) {
        self.points += 1;
        if !v.is_finite() {
            self.non_finite += 1;
            return;
        }
        self.last = Some((step, v));
        let point = Bucket::single(step, wall, v);
        match self.buckets.last_mut() {
            Some(b) if b.count < self.span => b.absorb(&point),
            _ => self.buckets.push(point),
        }
        if self.buckets.len() > self.cap {
            self.merge_pairs();
        }
    }

    fn merge_pairs(&mut self) {
        let merged: Vec<Bucket> = self
            .buckets
            .chunks(2)
            .map(|c| {
                let mut b = c[0];
                if let Some(o) = c.get(1) {
                    b.absorb(o);
                }
                b
            })
            .collect();
        self.buckets = merged;
        self.span = self.span.saturating_mul(2);
    }

    pub fn buckets(&self) -> &[Bucket] {
        &self.buckets
    }

    /// The newest finite point as (step, value).
    pub fn last(&self) -> Option<(f64, f64)> {
        self.last
    }

    /// Points pushed, finite or not.
    pub fn points(&self) -> u64 {
        self.points
    }

    pub fn non_finite(&self) -> u64 {
        self.non_finite
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// TensorBoard's debiased exponential moving average (`classicSmoothing` in
/// `tensorboard/webapp/widgets/line_chart_v2/data_transformer.ts`): `last = last*w + (1-w)*y`,
/// divided by `1 - w^n` over the n finite points so far. Non-finite values pass through
/// unchanged, and a constant series is returned as is.
pub fn debiased_ema(values: &[f64], weight: f64) -> Vec<f64> {
    let w = weight.clamp(0.0, 1.0);
    let constant = values.windows(2).all(|p| p[0] == p[1]);
    let mut last = 0.0;
    // w^n, kept as a running product (see `flush`).
    let mut wn = 1.0;
    values
        .iter()
        .map(|&y| {
            if constant || !y.is_finite() {
                return y;
            }
            last = last * w + (1.0 - w) * y;
            wn = flush(wn * w);
            let debias = if w == 1.0 { 1.0 } else { 1.0 - wn };
            last / debias
        })
        .collect()
}

/// Rounds values that have decayed below any visible effect to zero. `w^n` for large n
/// otherwise enters the subnormal range, where every float operation is ~100x slower.
fn flush(v: f64) -> f64 {
    if v < 1e-200 { 0.0 } else { v }
}

/// `w^k` for a weight in [0, 1], without subnormal intermediates.
fn decay(w: f64, k: u32) -> f64 {
    if k == 1 {
        return w;
    }
    if w <= 0.0 {
        return 0.0;
    }
    let e = f64::from(k) * w.ln();
    if e < -460.0 { 0.0 } else { e.exp() }
}

/// The same EMA over buckets: a bucket of `count` points with mean `m` is folded as `count`
/// steps of value `m`, so it equals [`debiased_ema`] exactly while no bucket is merged and
/// stays close after merging. Returns one smoothed value per bucket.
pub fn ema_buckets(buckets: &[Bucket], weight: f64) -> Vec<f64> {
    let w = weight.clamp(0.0, 1.0);
    let constant = buckets
        .windows(2)
        .all(|p| p[0].min == p[0].max && p[0].max == p[1].min && p[1].min == p[1].max);
    let mut last = 0.0;
    let mut wn = 1.0;
    buckets
        .iter()
        .map(|b| {
            if constant {
                return b.mean();
            }
            let wk = decay(w, b.count.max(1));
            last = last * wk + (1.0 - wk) * b.mean();
            wn = flush(wn * wk);
            let debias = if w == 1.0 { 1.0 } else { 1.0 - wn };
            last / debias
        })
        .collect()
}

/// Per screen column: the lowest and highest value and which came first, so the drawn line
/// goes through the spike in the order it happened.
#[derive(Clone, Copy, Debug)]
struct Column {
    lo: f64,
    hi: f64,
    lo_first: bool,
    n: usize,
}

/// Decimates `(x, lo, hi)` ranges (sorted by x) into at most two points per column of
/// `[x0, x1]` split into `columns`: the column's minimum and maximum, in the order they
/// occurred, at the column's centre. A one-bucket spike therefore stays visible however
/// many points share its column. Points outside `[x0, x1]` are dropped.
pub fn minmax_decimate(
    points: impl IntoIterator<Item = (f64, f64, f64)>,
    x0: f64,
    x1: f64,
    columns: usize,
) -> Vec<(f64, f64)> {
    let columns = columns.max(1);
    let width = (x1 - x0).max(f64::MIN_POSITIVE);
    let scale = columns as f64 / width;
    let mut cols: Vec<Option<Column>> = vec![None; columns];
    for (x, lo, hi) in points {
        if !(x0..=x1).contains(&x) {
            continue;
        }
        let c = ((x - x0) * scale) as usize;
        let slot = &mut cols[c.min(columns - 1)];
        match slot {
            None => {
                *slot = Some(Column {
                    lo,
                    hi,
                    lo_first: true,
                    n: 1,
                })
            }
            Some(col) => {
                if hi > col.hi {
                    col.hi = hi;
                    col.lo_first = true;
                }
                if lo < col.lo {
                    col.lo = lo;
                    col.lo_first = false;
                }
                col.n += 1;
            }
        }
    }
    let step = width / columns as f64;
    let mut out = Vec::with_capacity(columns * 2);
    for (i, col) in cols.iter().enumerate() {
        let Some(col) = col else { continue };
        let x = if columns == 1 {
            0.5 * (x0 + x1)
        } else {
            x0 + (i as f64 + 0.5) * step
        };
        if col.lo == col.hi {
            out.push((x, col.lo));
        } else if col.lo_first {
            out.push((x, col.lo));
            out.push((x, col.hi));
        } else {
            out.push((x, col.hi));
            out.push((x, col.lo));
        }
    }
    out
}

/// Decimates an (x, y) line (sorted by x) to the last point per column: enough for an
/// already-smooth line such as the EMA.
pub fn last_per_column(
    points: impl IntoIterator<Item = (f64, f64)>,
    x0: f64,
    x1: f64,
    columns: usize,
) -> Vec<(f64, f64)> {
    let columns = columns.max(1);
    let scale = columns as f64 / (x1 - x0).max(f64::MIN_POSITIVE);
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(columns);
    let mut last_col = usize::MAX;
    for (x, y) in points {
        if !(x0..=x1).contains(&x) {
            continue;
        }
        let c = (((x - x0) * scale) as usize).min(columns - 1);
        if c == last_col {
            if let Some(p) = out.last_mut() {
                *p = (x, y);
            }
        } else {
            out.push((x, y));
            last_col = c;
        }
    }
    out
}

/// Index of the bucket nearest to `x` on `axis` (buckets are sorted along both axes).
pub fn nearest_bucket(buckets: &[Bucket], x: f64, axis: XAxis) -> Option<usize> {
    if buckets.is_empty() {
        return None;
    }
    let i = buckets.partition_point(|b| b.x(axis) < x);
    let candidates = [i.checked_sub(1), (i < buckets.len()).then_some(i)];
    candidates.into_iter().flatten().min_by(|&a, &b| {
        let da = (buckets[a].x(axis) - x).abs();
        let db = (buckets[b].x(axis) - x).abs();
        da.total_cmp(&db)
    })
}

/// Count-weighted means of `n` equal slices of the buckets (fewer when there are fewer
/// buckets): the whole history squeezed into a sparkline.
pub fn column_means(buckets: &[Bucket], n: usize) -> Vec<f64> {
    let len = buckets.len();
    if len <= n {
        return buckets.iter().map(Bucket::mean).collect();
    }
    (0..n)
        .map(|i| {
            let slice = &buckets[i * len / n..(i + 1) * len / n];
            let count: f64 = slice.iter().map(|b| f64::from(b.count)).sum();
            slice.iter().map(|b| b.sum).sum::<f64>() / count.max(1.0)
        })
        .collect()
}

/// A y transform for log scale: log10 of positive values; zero and negatives have no place
/// on a log axis and are dropped (TensorBoard does the same).
pub fn log_y(v: f64) -> Option<f64> {
    (v > 0.0).then(|| v.log10())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64], cap: usize) -> Series {
        let mut s = Series::with_cap(cap);
        for (i, v) in values.iter().enumerate() {
            s.push(i as f64, i as f64 * 0.5, *v);
        }
        s
    }

    #[test]
    fn ema_matches_tensorboard_debiased_smoothing() {
        // First value is returned unbiased; then (0.6*0 + 0.4*1 ... ) / (1-0.6^n).
        let out = debiased_ema(&[1.0, 2.0, 3.0], 0.6);
        assert!((out[0] - 1.0).abs() < 1e-12);
        let last2 = 0.6 * 0.4 + 0.4 * 2.0;
        assert!((out[1] - last2 / (1.0 - 0.36)).abs() < 1e-12);
        let last3 = last2 * 0.6 + 0.4 * 3.0;
        assert!((out[2] - last3 / (1.0 - 0.216)).abs() < 1e-12);
    }

    #[test]
    fn ema_passes_non_finite_through_and_leaves_constants_alone() {
        let out = debiased_ema(&[1.0, f64::NAN, 3.0], 0.5);
        assert!(out[1].is_nan());
        assert!((out[2] - (0.25 + 1.5) / 0.75).abs() < 1e-12);
        assert_eq!(debiased_ema(&[2.0; 4], 0.9), vec![2.0; 4]);
        assert_eq!(debiased_ema(&[1.0, 5.0], 0.0), vec![1.0, 5.0]);
    }

    #[test]
    fn long_series_smooth_without_underflow_trouble() {
        let values: Vec<f64> = (0..100_000).map(|i| (i % 7) as f64).collect();
        let out = debiased_ema(&values, 0.6);
        assert!(out.iter().all(|v| v.is_finite()));
        let s = series(&values, 512);
        let b = ema_buckets(s.buckets(), 0.999);
        assert!(b.iter().all(|v| v.is_finite() && (0.0..=6.0).contains(v)));
    }

    #[test]
    fn bucket_ema_equals_raw_ema_before_any_merge() {
        let values: Vec<f64> = (0..50).map(|i| ((i * 37) % 11) as f64).collect();
        let s = series(&values, 1000);
        let a = ema_buckets(s.buckets(), 0.8);
        let b = debiased_ema(&values, 0.8);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-9);
        }
    }

    #[test]
    fn series_stays_within_its_cap_and_keeps_spikes_and_totals() {
        let mut values = vec![1.0; 100_000];
        values[77_777] = 500.0;
        values[10] = -3.0;
        let s = series(&values, 256);
        assert!(s.buckets().len() <= 256, "{}", s.buckets().len());
        let max = s.buckets().iter().map(|b| b.max).fold(f64::MIN, f64::max);
        let min = s.buckets().iter().map(|b| b.min).fold(f64::MAX, f64::min);
        assert_eq!((min, max), (-3.0, 500.0));
        let count: u64 = s.buckets().iter().map(|b| u64::from(b.count)).sum();
        assert_eq!(count, 100_000);
        let sum: f64 = s.buckets().iter().map(|b| b.sum).sum();
        // All ones, but one 500 and one -3 in place of two ones.
        assert!((sum - (100_000.0 - 2.0 + 500.0 - 3.0)).abs() < 1e-6);
        // Buckets stay in step order with contiguous spans.
        for p in s.buckets().windows(2) {
            assert!(p[0].step1 < p[1].step0);
        }
        assert_eq!(s.last(), Some((99_999.0, 1.0)));
    }

    #[test]
    fn non_finite_points_are_counted_not_stored() {
        let s = series(&[1.0, f64::NAN, f64::INFINITY, 2.0], 16);
        assert_eq!((s.points(), s.non_finite(), s.buckets().len()), (4, 2, 2));
    }

    #[test]
    fn decimation_keeps_a_single_spike_and_bounds_the_output() {
        let mut pts: Vec<(f64, f64, f64)> = (0..10_000).map(|i| (i as f64, 0.0, 0.0)).collect();
        pts[5_001] = (5_001.0, 9.0, 9.0);
        let out = minmax_decimate(pts, 0.0, 9_999.0, 100);
        assert!(out.len() <= 200);
        assert!(out.iter().any(|p| p.1 == 9.0));
        // Columns come out left to right.
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn decimation_orders_min_and_max_as_they_happened() {
        let down_then_up = [(0.0, 5.0, 5.0), (0.1, 1.0, 1.0), (0.2, 9.0, 9.0)];
        let out = minmax_decimate(down_then_up, 0.0, 1.0, 1);
        assert_eq!(out, vec![(0.5, 1.0), (0.5, 9.0)]);
        let up_then_down = [(0.0, 5.0, 5.0), (0.1, 9.0, 9.0), (0.2, 1.0, 1.0)];
        let out = minmax_decimate(up_then_down, 0.0, 1.0, 1);
        assert_eq!(out, vec![(0.5, 9.0), (0.5, 1.0)]);
    }

    #[test]
    fn last_per_column_keeps_one_point_per_column() {
        let pts = (0..1000).map(|i| (i as f64, i as f64));
        let out = last_per_column(pts, 0.0, 999.0, 10);
        assert_eq!(out.len(), 10);
        assert_eq!(out.last(), Some(&(999.0, 999.0)));
    }

    #[test]
    fn nearest_bucket_finds_the_closest_step() {
        let s = series(&[1.0, 2.0, 3.0, 4.0], 16);
        assert_eq!(nearest_bucket(s.buckets(), 2.4, XAxis::Step), Some(2));
        assert_eq!(nearest_bucket(s.buckets(), -5.0, XAxis::Step), Some(0));
        assert_eq!(nearest_bucket(s.buckets(), 50.0, XAxis::Step), Some(3));
        assert_eq!(nearest_bucket(s.buckets(), 1.1, XAxis::WallTime), Some(2));
        assert_eq!(nearest_bucket(&[], 1.0, XAxis::Step), None);
    }

    #[test]
    fn column_means_squeeze_history_into_n_values() {
        let s = series(&(0..100).map(f64::from).collect::<Vec<_>>(), 1000);
        assert_eq!(column_means(s.buckets(), 4), vec![12.0, 37.0, 62.0, 87.0]);
        assert_eq!(column_means(s.buckets(), 1000).len(), 100);
    }

    #[test]
    fn log_scale_drops_non_positive_values() {
        assert_eq!(log_y(100.0), Some(2.0));
        assert_eq!(log_y(0.0), None);
        assert_eq!(log_y(-1.0), None);
    }
}
