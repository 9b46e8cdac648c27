//! Latency models: how long a message takes between two simulated nodes.
//!
//! Every model places nodes one at a time (in creation order, so node `i` is the `i`-th
//! placement) from the simulator's seeded RNG, and answers one-way delays in microseconds.
//! Delays are symmetric; a round trip is twice the one-way delay.

use std::fmt;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One-way delay across one side of the plane model's unit square, in microseconds (100 ms).
///
/// With nodes uniform in the square the mean one-way delay is about 52 ms (RTT about 104 ms)
/// and the largest about 141 ms, the range of wide-area Internet paths.
pub const PLANE_SIDE_US: f64 = 100_000.0;

/// Smallest one-way delay between two distinct nodes, in microseconds (a LAN hop).
pub const MIN_ONE_WAY_US: u64 = 100;

/// Number of regions in the `regions` model.
pub const REGIONS: usize = 6;

/// Standard deviation of a node's offset from its region centre, as a fraction of the plane's
/// side (0.02 = 2 ms): intra-region delays of a few milliseconds.
const REGION_SPREAD: f64 = 0.02;

/// Range of a node's access delay to its site in the matrix model, in microseconds.
const SITE_ACCESS_US: (u32, u32) = (50, 500);

/// Which latency model to use, before any node is placed.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// Nodes at uniformly random points of a plane; delay = Euclidean distance (Pastry 2001).
    Plane,
    /// A few regions (clusters) at random points of the plane; nodes near their region's centre.
    Regions,
    /// Measured site-to-site round-trip times; nodes placed at a random site each.
    Matrix(RttMatrix),
}

impl ModelSpec {
    /// The model's name as the CLI and reports spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Plane => "plane",
            Self::Regions => "regions",
            Self::Matrix(_) => "matrix",
        }
    }
}

/// One-way delays between placed nodes, in microseconds: what the
/// [network](super::net::Network) needs of a latency model. A round trip is twice the one-way
/// delay.
pub(crate) trait Latency {
    /// One-way delay from node `a` to node `b`.
    fn one_way_us(&self, a: usize, b: usize) -> u64;
}

impl Latency for LatencyModel {
    fn one_way_us(&self, a: usize, b: usize) -> u64 {
        Self::one_way_us(self, a, b)
    }
}

/// A latency model with its placed nodes.
#[derive(Debug, Clone)]
pub struct LatencyModel {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Points in the unit square, `f32` pairs to keep 100,000 nodes small.
    Points {
        /// Region centres (empty for the plain plane model).
        centres: Vec<(f64, f64)>,
        points: Vec<(f32, f32)>,
    },
    Sites {
        /// `sites * sites` one-way delays in microseconds (symmetrised).
        one_way_us: Vec<u32>,
        sites: usize,
        /// Per node: its site and its access delay to the site in microseconds.
        placement: Vec<(u32, u32)>,
    },
}

impl LatencyModel {
    /// A model with no nodes placed yet. The regions model draws its centres from `rng`.
    pub fn new(spec: &ModelSpec, rng: &mut ChaCha8Rng) -> Self {
        let kind = match spec {
            ModelSpec::Plane => Kind::Points {
                centres: Vec::new(),
                points: Vec::new(),
            },
            ModelSpec::Regions => Kind::Points {
                centres: (0..REGIONS).map(|_| (rng.gen(), rng.gen())).collect(),
                points: Vec::new(),
            },
            ModelSpec::Matrix(matrix) => {
                let sites = matrix.sites();
                let mut one_way_us = vec![0u32; sites * sites];
                for a in 0..sites {
                    for b in 0..sites {
                        // Mean of both directions, halved: RTT in ms -> one-way in µs.
                        let rtt_ms = (matrix.rtt_ms(a, b) + matrix.rtt_ms(b, a)) / 2.0;
                        one_way_us[a * sites + b] = (rtt_ms * 500.0).round() as u32;
                    }
                }
                Kind::Sites {
                    one_way_us,
                    sites,
                    placement: Vec::new(),
                }
            }
        };
        Self { kind }
    }

    /// Places the next node (its index is the number of nodes placed before it).
    pub fn place(&mut self, rng: &mut ChaCha8Rng) {
        match &mut self.kind {
            Kind::Points { centres, points } => {
                let point = if centres.is_empty() {
                    (rng.gen::<f32>(), rng.gen::<f32>())
                } else {
                    let (cx, cy) = centres[rng.gen_range(0..centres.len())];
                    let (dx, dy) = gaussian_pair(rng);
                    (
                        (cx + dx * REGION_SPREAD) as f32,
                        (cy + dy * REGION_SPREAD) as f32,
                    )
                };
                points.push(point);
            }
            Kind::Sites {
                sites, placement, ..
            } => {
                let site = rng.gen_range(0..*sites) as u32;
                let access = rng.gen_range(SITE_ACCESS_US.0..=SITE_ACCESS_US.1);
                placement.push((site, access));
            }
        }
    }

    /// Number of nodes placed so far.
    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Points { points, .. } => points.len(),
            Kind::Sites { placement, .. } => placement.len(),
        }
    }

    /// Whether no node has been placed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One-way delay from node `a` to node `b` in microseconds (0 from a node to itself).
    ///
    /// # Panics
    /// If either node has not been placed; the simulator places every node it creates.
    pub fn one_way_us(&self, a: usize, b: usize) -> u64 {
        if a == b {
            return 0;
        }
        let delay = match &self.kind {
            Kind::Points { points, .. } => {
                let (ax, ay) = points[a];
                let (bx, by) = points[b];
                let (dx, dy) = (f64::from(ax - bx), f64::from(ay - by));
                ((dx * dx + dy * dy).sqrt() * PLANE_SIDE_US) as u64
            }
            Kind::Sites {
                one_way_us,
                sites,
                placement,
            } => {
                let (sa, acc_a) = placement[a];
                let (sb, acc_b) = placement[b];
                let wide = if sa == sb {
                    0
                } else {
                    one_way_us[sa as usize * *sites + sb as usize]
                };
                u64::from(wide) + u64::from(acc_a) + u64::from(acc_b)
            }
        };
        delay.max(MIN_ONE_WAY_US)
    }

    /// The node's point on the unit square (plane and regions models).
    pub(crate) fn point(&self, index: usize) -> Option<(f32, f32)> {
        match &self.kind {
            Kind::Points { points, .. } => points.get(index).copied(),
            Kind::Sites { .. } => None,
        }
    }

    /// Round-trip time between two nodes in microseconds.
    pub fn rtt_us(&self, a: usize, b: usize) -> u64 {
        2 * self.one_way_us(a, b)
    }
}

/// A uniform grid over the unit square for nearest-node queries (points outside are clamped).
#[derive(Debug)]
pub(crate) struct Grid {
    side: usize,
    cells: Vec<Vec<u32>>,
}

impl Grid {
    /// A grid sized for about `expected` points (two per cell).
    pub(crate) fn new(expected: usize) -> Self {
        let side = ((expected as f64 / 2.0).sqrt().ceil() as usize).clamp(1, 1024);
        Self {
            side,
            cells: vec![Vec::new(); side * side],
        }
    }

    fn cell_of(&self, (x, y): (f32, f32)) -> (usize, usize) {
        let clamp = |v: f32| ((v.max(0.0) * self.side as f32) as usize).min(self.side - 1);
        (clamp(x), clamp(y))
    }

    /// Adds node `index` at `point`.
    pub(crate) fn insert(&mut self, index: u32, point: (f32, f32)) {
        let (cx, cy) = self.cell_of(point);
        self.cells[cy * self.side + cx].push(index);
    }

    /// Removes node `index` (at `point`).
    pub(crate) fn remove(&mut self, index: u32, point: (f32, f32)) {
        let (cx, cy) = self.cell_of(point);
        let cell = &mut self.cells[cy * self.side + cx];
        if let Some(pos) = cell.iter().position(|&i| i == index) {
            cell.swap_remove(pos);
        }
    }

    /// The node nearest to `point` by `distance` (ties: lower index), searching rings of cells
    /// outwards until no unsearched cell can hold a nearer node.
    pub(crate) fn nearest(
        &self,
        point: (f32, f32),
        distance: impl Fn(u32) -> u64,
        cell_us: f64,
    ) -> Option<u32> {
        let (cx, cy) = self.cell_of(point);
        let (cx, cy) = (cx as isize, cy as isize);
        let side = self.side as isize;
        let mut best: Option<(u64, u32)> = None;
        for r in 0..side {
            for dy in -r..=r {
                for dx in -r..=r {
                    if dx.abs() != r && dy.abs() != r {
                        continue;
                    }
                    let (x, y) = (cx + dx, cy + dy);
                    if x < 0 || y < 0 || x >= side || y >= side {
                        continue;
                    }
                    for &i in &self.cells[(y * side + x) as usize] {
                        let d = distance(i);
                        if best.map_or(true, |b| (d, i) < b) {
                            best = Some((d, i));
                        }
                    }
                }
            }
            // Any node in ring r + 1 or beyond is at least r cells away.
            if let Some((d, _)) = best {
                if d as f64 <= r as f64 * cell_us {
                    break;
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// The one-way delay across one cell, in microseconds.
    pub(crate) fn cell_us(&self) -> f64 {
        PLANE_SIDE_US / self.side as f64
    }
}

/// Two independent standard normal samples (Box-Muller).
fn gaussian_pair(rng: &mut ChaCha8Rng) -> (f64, f64) {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let u: f64 = 1.0 - rng.gen::<f64>();
    let v: f64 = rng.gen();
    let r = (-2.0 * u.ln()).sqrt();
    let theta = std::f64::consts::TAU * v;
    (r * theta.cos(), r * theta.sin())
}

/// A square matrix of measured round-trip times between sites, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct RttMatrix {
    sites: usize,
    rtt_ms: Vec<f64>,
}

/// Why a latency matrix could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The file could not be read.
    #[error("cannot read latency matrix {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The text holds no rows.
    #[error("latency matrix is empty: expected a square matrix of RTTs in ms, one row per line")]
    Empty,
    /// A field is not a number.
    #[error("line {line}, column {column}: {text:?} is not a number (RTTs are in milliseconds)")]
    NotNumber {
        /// 1-based line number.
        line: usize,
        /// 1-based character column where the field starts.
        column: usize,
        /// The field's text.
        text: String,
    },
    /// A field is negative, infinite or NaN.
    #[error("line {line}, column {column}: RTT {value} ms is not a finite non-negative number")]
    Invalid {
        /// 1-based line number.
        line: usize,
        /// 1-based character column where the field starts.
        column: usize,
        /// The value read.
        value: f64,
    },
    /// A row's length differs from the number of rows.
    #[error("line {line}: row has {found} entries but the matrix has {expected} rows (it must be square)")]
    NotSquare {
        /// 1-based line number of the offending row.
        line: usize,
        /// Entries in that row.
        found: usize,
        /// Number of rows, which every row's length must equal.
        expected: usize,
    },
}

impl RttMatrix {
    /// Reads a matrix from a file (see [`RttMatrix::parse`] for the format).
    pub fn from_file(path: &Path) -> Result<Self, MatrixError> {
        let text = std::fs::read_to_string(path).map_err(|source| MatrixError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses whitespace-separated RTTs in milliseconds, one row per line.
    ///
    /// Blank lines and lines starting with `#` are skipped. The matrix must be square and every
    /// entry a finite non-negative number; the diagonal is ignored (nodes at the same site see
    /// only their access delays).
    ///
    /// ```
    /// use wendy::sim::RttMatrix;
    /// let m = RttMatrix::parse("0 80\n80 0\n").unwrap();
    /// assert_eq!(m.sites(), 2);
    /// assert!(RttMatrix::parse("0 80\n80\n").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, MatrixError> {
        let mut rows: Vec<(usize, Vec<f64>)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let mut row = Vec::new();
            for (column, field) in fields(line) {
                let value: f64 = field.parse().map_err(|_| MatrixError::NotNumber {
                    line: index + 1,
                    column,
                    text: field.to_string(),
                })?;
                if !value.is_finite() || value < 0.0 {
                    return Err(MatrixError::Invalid {
                        line: index + 1,
                        column,
                        value,
                    });
                }
                row.push(value);
            }
            rows.push((index + 1, row));
        }
        if rows.is_empty() {
            return Err(MatrixError::Empty);
        }
        let sites = rows.len();
        let mut rtt_ms = Vec::with_capacity(sites * sites);
        for (line, row) in rows {
            if row.len() != sites {
                return Err(MatrixError::NotSquare {
                    line,
                    found: row.len(),
                    expected: sites,
                });
            }
            rtt_ms.extend(row);
        }
        Ok(Self { sites, rtt_ms })
    }

    /// Number of sites (rows).
    pub fn sites(&self) -> usize {
        self.sites
    }

    /// The measured RTT from site `a` to site `b` in milliseconds.
    pub fn rtt_ms(&self, a: usize, b: usize) -> f64 {
        self.rtt_ms[a * self.sites + b]
    }
}

impl fmt::Display for RttMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{0}x{0} RTT matrix", self.sites)
    }
}

/// Whitespace-separated fields of a line with their 1-based character columns.
fn fields(line: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = line;
    let mut offset = 0;
    std::iter::from_fn(move || {
        let start = rest.find(|c: char| !c.is_whitespace())?;
        let after = &rest[start..];
        let len = after.find(char::is_whitespace).unwrap_or(after.len());
        let field = &after[..len];
        let column = line[..offset + start].chars().count() + 1;
        offset += start + len;
        rest = &after[len..];
        Some((column, field))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(7)
    }

    #[test]
    fn plane_delays_are_symmetric_realistic_and_zero_to_self() {
        let mut rng = rng();
        let mut model = LatencyModel::new(&ModelSpec::Plane, &mut rng);
        for _ in 0..200 {
            model.place(&mut rng);
        }
        let mut sum = 0;
        for a in 0..200 {
            assert_eq!(model.one_way_us(a, a), 0);
            for b in 0..200 {
                assert_eq!(model.one_way_us(a, b), model.one_way_us(b, a));
                if a != b {
                    let d = model.one_way_us(a, b);
                    assert!((MIN_ONE_WAY_US..=142_000).contains(&d), "{d}");
                    sum += d;
                }
            }
        }
        let mean_ms = sum as f64 / (200.0 * 199.0) / 1000.0;
        assert!((40.0..65.0).contains(&mean_ms), "mean one-way {mean_ms} ms");
    }

    #[test]
    fn grid_finds_the_exact_nearest_node() {
        let mut rng = rng();
        for spec in [ModelSpec::Plane, ModelSpec::Regions] {
            let mut model = LatencyModel::new(&spec, &mut rng);
            let mut grid = Grid::new(500);
            for i in 0..500 {
                model.place(&mut rng);
                if i % 5 != 0 {
                    grid.insert(i as u32, model.point(i).unwrap());
                }
            }
            // Remove a few, then ask for the nearest of every node among the rest.
            for i in (1..500).step_by(7) {
                grid.remove(i as u32, model.point(i).unwrap());
            }
            let member = |i: usize| i % 5 != 0 && (i < 1 || (i - 1) % 7 != 0);
            for q in (0..500).step_by(5) {
                let expected = (0..500)
                    .filter(|&i| member(i))
                    .min_by_key(|&i| (model.one_way_us(q, i), i))
                    .map(|i| i as u32);
                let found = grid.nearest(
                    model.point(q).unwrap(),
                    |i| model.one_way_us(q, i as usize),
                    grid.cell_us(),
                );
                assert_eq!(found, expected, "{spec:?} query {q}");
            }
        }
    }

    #[test]
    fn regions_are_clustered() {
        let mut rng = rng();
        let mut model = LatencyModel::new(&ModelSpec::Regions, &mut rng);
        for _ in 0..300 {
            model.place(&mut rng);
        }
        let mut delays: Vec<u64> = (1..300).map(|b| model.one_way_us(0, b)).collect();
        delays.sort_unstable();
        // With 6 regions, the nearest sixth of the nodes is the home region: a few ms away,
        // while the median node is in another region, tens of ms away.
        let near = delays[20];
        let median = delays[150];
        assert!(near < 10_000, "intra-region {near} µs");
        assert!(median > 3 * near, "inter {median} vs intra {near}");
    }

    #[test]
    fn matrix_model_uses_site_rtts_plus_access_delays() {
        let matrix = RttMatrix::parse("0 100 200\n100 0 60\n200 60 0\n").unwrap();
        let mut rng = rng();
        let mut model = LatencyModel::new(&ModelSpec::Matrix(matrix), &mut rng);
        for _ in 0..60 {
            model.place(&mut rng);
        }
        let Kind::Sites { placement, .. } = &model.kind else {
            panic!("matrix model");
        };
        let placement = placement.clone();
        for a in 0..60 {
            for b in 0..60 {
                if a == b {
                    continue;
                }
                let (sa, _) = placement[a];
                let (sb, _) = placement[b];
                let d = model.one_way_us(a, b);
                let wide = match (sa.min(sb), sa.max(sb)) {
                    (x, y) if x == y => 0,
                    (0, 1) => 50_000,
                    (0, 2) => 100_000,
                    _ => 30_000,
                };
                assert!(
                    (wide + 100..=wide + 1000).contains(&d),
                    "{a}@{sa} {b}@{sb}: {d}"
                );
            }
        }
    }

    #[test]
    fn matrix_parse_accepts_comments_blank_lines_and_decimals() {
        let m = RttMatrix::parse("# sites a b\n\n  0   12.5\n12.5 0\n\n").unwrap();
        assert_eq!(m.sites(), 2);
        assert_eq!(m.rtt_ms(0, 1), 12.5);
    }

    #[test]
    fn matrix_parse_errors_name_line_column_and_problem() {
        assert!(matches!(RttMatrix::parse(""), Err(MatrixError::Empty)));
        assert!(matches!(
            RttMatrix::parse("# only a comment\n\n"),
            Err(MatrixError::Empty)
        ));
        match RttMatrix::parse("0 1 2\n1 0 2\n") {
            Err(MatrixError::NotSquare {
                line: 1,
                found: 3,
                expected: 2,
            }) => {}
            other => panic!("{other:?}"),
        }
        match RttMatrix::parse("0 1\n1 0 5\n") {
            Err(MatrixError::NotSquare {
                line: 2,
                found: 3,
                expected: 2,
            }) => {}
            other => panic!("{other:?}"),
        }
        let err = RttMatrix::parse("0 1\n1  abc\n").unwrap_err();
        match &err {
            MatrixError::NotNumber { line, column, text } => {
                assert_eq!((*line, *column, text.as_str()), (2, 4, "abc"));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("line 2, column 4"), "{err}");
        match RttMatrix::parse("0 -3\n1 0\n") {
            Err(MatrixError::Invalid {
                line: 1, column: 3, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            RttMatrix::parse("0 inf\n1 0\n"),
            Err(MatrixError::Invalid { .. })
        ));
        assert!(matches!(
            RttMatrix::parse("0 NaN\n1 0\n"),
            Err(MatrixError::Invalid { .. })
        ));
        let missing = RttMatrix::from_file(Path::new("/nonexistent/matrix.txt")).unwrap_err();
        assert!(matches!(missing, MatrixError::Io { .. }));
        assert!(missing.to_string().contains("/nonexistent/matrix.txt"));
    }
}
