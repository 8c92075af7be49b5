//! Which formulation each fused op and each orthogonal map takes on a device: the one place the
//! route is chosen, so a run can say afterwards which numerics produced its result.
//!
//! A device's table starts "all fused, the device's default map route"; the device self-check
//! (`super::self_check`) replaces it before a run uses the device, switching an op that errors
//! or disagrees with its composed candle formulation to that formulation, and a map whose gemm
//! route fails to the exact host route. During a run a gemm route that cannot finish a batch
//! (a Cholesky breakdown, Newton–Schulz not converging, a launch error) takes the exact route for
//! that batch and leaves a [`MapFallback`] here, which the trainer drains after every step to
//! warn at the step it happened and to count.
//!
//! The table is per physical device (candle's `DeviceLocation`) and process-wide, because the
//! ops are reached from layers that take no context; runs of one process install it in turn.

use super::OrthMap;
use candle_core::{Device, DeviceLocation};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// `run.ops`: how the fused ops are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpsMode {
    /// The self-check decides: an op that fails it takes its composed formulation, with a warning.
    #[default]
    Auto,
    /// Every fused op; a failed self-check is an error.
    Fused,
    /// candle's own ops only (and the exact host route for the maps): the cautious choice.
    Composed,
    /// These ops composed (`"composed: bn, acos"`, what a run's `ops` column names), the others
    /// as in `auto`: pins what a warning once switched.
    ComposedOps(OpSet),
}

/// A set of fused ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpSet(u8);

impl OpSet {
    pub fn with(self, op: FusedOp) -> Self {
        Self(self.0 | 1 << op.index())
    }

    pub fn contains(self, op: FusedOp) -> bool {
        self.0 & 1 << op.index() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = FusedOp> {
        FusedOp::ALL
            .into_iter()
            .filter(move |op| self.contains(*op))
    }
}

/// `run.map_route`: how the orthogonal maps are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MapRouteChoice {
    /// The device's default: exact on the CPU; on a GPU Newton–Schulz for LS and CP, and for GS
    /// and HR Cholesky-QR2 below d = [`GPU_EXACT_FROM`], the exact host route from there.
    #[default]
    Auto,
    /// The exact f64 factorisations on the host (spec §2.2–2.5), on every device.
    Exact,
    /// Built on matrix products where the tensors live: Newton–Schulz (LS, CP), Cholesky-QR2
    /// (GS, HR), each falling back to the exact route for a batch it cannot finish.
    Gemm,
}

/// From this size on, GS and HR take the exact host route on a GPU under `auto`: on an H200
/// (2026-12-04, CNN-6 width 64) Cholesky-QR2's one-block-per-matrix kernels took 100 ms for
/// five d = 576 matrices and 490 ms at d = 1024 (HR 150 and 770; GS 213 images/s), the host
/// route turned that into 581 images/s — while below it (S-OPT's 144- and 256-dimensional
/// subsets) the kernels are cheap and the host round trip per call is not (S-OPT fell from
/// 5 890 to 2 030 images/s on the host route).
pub const GPU_EXACT_FROM: usize = 512;

/// The fused ops of the training step (the orthogonal maps have [`MapRoute`]s instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FusedOp {
    Conv2d,
    BatchNorm,
    MaxPool,
    Acos,
}

impl FusedOp {
    /// The op of a name as [`FusedOp::name`] writes it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    pub const ALL: [FusedOp; 4] = [
        FusedOp::Conv2d,
        FusedOp::BatchNorm,
        FusedOp::MaxPool,
        FusedOp::Acos,
    ];

    /// The name in records and warnings (`fused; composed: bn`).
    pub fn name(self) -> &'static str {
        match self {
            FusedOp::Conv2d => "conv2d",
            FusedOp::BatchNorm => "bn",
            FusedOp::MaxPool => "max_pool",
            FusedOp::Acos => "acos",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The algorithm that computed a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapRoute {
    Exact,
    NewtonSchulz,
    CholeskyQr2,
}

impl MapRoute {
    pub fn name(self) -> &'static str {
        match self {
            MapRoute::Exact => "exact",
            MapRoute::NewtonSchulz => "newton-schulz",
            MapRoute::CholeskyQr2 => "cholesky-qr2",
        }
    }

    /// The gemm route of `map`.
    pub fn gemm(map: OrthMap) -> MapRoute {
        match map {
            OrthMap::Lowdin | OrthMap::Cayley => MapRoute::NewtonSchulz,
            OrthMap::GramSchmidt | OrthMap::Householder => MapRoute::CholeskyQr2,
        }
    }
}

/// A batch a gemm route could not finish, computed by the exact route instead.
#[derive(Debug, Clone, PartialEq)]
pub struct MapFallback {
    pub map: OrthMap,
    pub route: MapRoute,
    pub reason: String,
}

/// A map's batch: the map, `d` and `b`.
pub(crate) type BatchShape = (OrthMap, usize, usize);

/// One device's routes.
#[derive(Debug)]
pub struct DeviceRoutes {
    composed: [AtomicBool; 4],
    /// Per map (`OrthMap::ALL` order): the route a batch tries first.
    maps: [MapRoute; 4],
    /// A size from which the map takes the exact route whatever `maps` says (GS/HR on a GPU).
    exact_from: [Option<usize>; 4],
    fallbacks: Mutex<Vec<MapFallback>>,
    fallback_count: AtomicUsize,
    /// Newton–Schulz iterations the last batch of each (map, d, b) needed: the next batch runs
    /// that many (plus a margin) before its one read of the residuals.
    iterations: Mutex<Vec<(BatchShape, usize)>>,
}

fn map_index(map: OrthMap) -> usize {
    OrthMap::ALL
        .iter()
        .position(|m| *m == map)
        .unwrap_or_default()
}

impl DeviceRoutes {
    /// Every fused op, and each map's route from `choice` on `device`.
    pub fn new(device: &Device, choice: MapRouteChoice) -> Self {
        Self::for_host(device.is_cpu(), choice)
    }

    /// The table of a CPU (`cpu`) or of a GPU.
    fn for_host(cpu: bool, choice: MapRouteChoice) -> Self {
        let gemm = match choice {
            MapRouteChoice::Exact => false,
            MapRouteChoice::Gemm => true,
            MapRouteChoice::Auto => !cpu,
        };
        let large_exact = |m: OrthMap| match m {
            OrthMap::GramSchmidt | OrthMap::Householder
                if gemm && choice == MapRouteChoice::Auto =>
            {
                Some(GPU_EXACT_FROM)
            }
            _ => None,
        };
        Self {
            composed: Default::default(),
            maps: OrthMap::ALL.map(|m| {
                if gemm {
                    MapRoute::gemm(m)
                } else {
                    MapRoute::Exact
                }
            }),
            exact_from: OrthMap::ALL.map(large_exact),
            fallbacks: Mutex::new(Vec::new()),
            fallback_count: AtomicUsize::new(0),
            iterations: Mutex::new(Vec::new()),
        }
    }

    pub fn set_composed(&self, op: FusedOp) {
        self.composed[op.index()].store(true, Ordering::Relaxed);
    }

    /// Whether `op` runs fused on this device.
    pub fn fused(&self, op: FusedOp) -> bool {
        !self.composed[op.index()].load(Ordering::Relaxed)
    }

    /// The ops that take their composed formulation.
    pub fn composed_ops(&self) -> Vec<FusedOp> {
        FusedOp::ALL
            .into_iter()
            .filter(|op| !self.fused(*op))
            .collect()
    }

    /// The route of `map`'s small batches (all of them, unless it switches to exact at a size).
    pub fn map_route(&self, map: OrthMap) -> MapRoute {
        self.maps[map_index(map)]
    }

    /// The route of a batch of `map` at size `d`.
    pub fn map_route_at(&self, map: OrthMap, d: usize) -> MapRoute {
        match self.exact_from[map_index(map)] {
            Some(from) if d >= from => MapRoute::Exact,
            _ => self.map_route(map),
        }
    }

    /// `map` takes the exact route from now on.
    pub fn set_exact(&mut self, map: OrthMap) {
        self.maps[map_index(map)] = MapRoute::Exact;
        self.exact_from[map_index(map)] = None;
    }

    /// Notes a batch the gemm route could not finish.
    pub fn record_fallback(&self, fallback: MapFallback) {
        self.fallback_count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.fallbacks.lock() {
            f.push(fallback);
        }
    }

    /// The fallbacks since the last call (the trainer's per-step drain).
    pub fn take_fallbacks(&self) -> Vec<MapFallback> {
        self.fallbacks
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }

    /// Fallbacks since the table was installed.
    pub fn fallback_count(&self) -> usize {
        self.fallback_count.load(Ordering::Relaxed)
    }

    pub(crate) fn iterations_hint(&self, key: BatchShape) -> Option<usize> {
        let table = self.iterations.lock().ok()?;
        table.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
    }

    pub(crate) fn set_iterations_hint(&self, key: BatchShape, n: usize) {
        if let Ok(mut table) = self.iterations.lock() {
            match table.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = n,
                None => table.push((key, n)),
            }
        }
    }

    /// `fused`, `composed`, or `fused; composed: bn, acos`.
    pub fn ops_label(&self) -> String {
        let composed = self.composed_ops();
        match composed.len() {
            0 => "fused".into(),
            n if n == FusedOp::ALL.len() => "composed".into(),
            _ => {
                let names: Vec<&str> = composed.iter().map(|op| op.name()).collect();
                format!("fused; composed: {}", names.join(", "))
            }
        }
    }

    /// The route of `map`'s batches, e.g. `cholesky-qr2`, or `cholesky-qr2 below d = 512, exact
    /// from there`.
    pub fn map_label(&self, map: OrthMap) -> String {
        let route = self.map_route(map);
        match self.exact_from[map_index(map)] {
            Some(from) if route != MapRoute::Exact => {
                format!("{} below d = {from}, exact from there", route.name())
            }
            _ => route.name().to_string(),
        }
    }
}

type Registry = RwLock<Vec<(DeviceLocation, Arc<DeviceRoutes>)>>;

static REGISTRY: Registry = RwLock::new(Vec::new());

/// The routes installed for `device`, or its defaults (every fused op, the automatic map route)
/// when nothing was installed.
pub fn routes(device: &Device) -> Arc<DeviceRoutes> {
    let location = device.location();
    if let Ok(table) = REGISTRY.read() {
        if let Some((_, r)) = table.iter().find(|(l, _)| *l == location) {
            return r.clone();
        }
    }
    let fresh = Arc::new(DeviceRoutes::new(device, MapRouteChoice::Auto));
    match REGISTRY.write() {
        Ok(mut table) => match table.iter().find(|(l, _)| *l == location) {
            Some((_, r)) => r.clone(),
            None => {
                table.push((location, fresh.clone()));
                fresh
            }
        },
        Err(_) => fresh,
    }
}

/// Makes `routes` the table of `device` for everything that runs on it from now on.
pub fn install(device: &Device, routes: DeviceRoutes) -> Arc<DeviceRoutes> {
    let location = device.location();
    let routes = Arc::new(routes);
    if let Ok(mut table) = REGISTRY.write() {
        table.retain(|(l, _)| *l != location);
        table.push((location, routes.clone()));
    }
    routes
}

macro_rules! named_choice {
    ($ty:ty, $what:literal, $($variant:ident => $name:literal),+) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $(Self::$variant => $name),+ })
            }
        }

        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(format!(
                        concat!("expected ", $what, ", found {:?}"),
                        s
                    )),
                }
            }
        }
    };
}

impl fmt::Display for OpsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpsMode::Auto => f.write_str("auto"),
            OpsMode::Fused => f.write_str("fused"),
            OpsMode::Composed => f.write_str("composed"),
            OpsMode::ComposedOps(set) => {
                let names: Vec<&str> = set.iter().map(FusedOp::name).collect();
                write!(f, "composed: {}", names.join(", "))
            }
        }
    }
}

impl FromStr for OpsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = || {
            let ops: Vec<&str> = FusedOp::ALL.iter().map(|op| op.name()).collect();
            format!(
                "expected \"auto\", \"fused\", \"composed\" or \"composed: OP, …\" (OP one of {}), \
                 found {s:?}",
                ops.join(", ")
            )
        };
        match s {
            "auto" => return Ok(OpsMode::Auto),
            "fused" => return Ok(OpsMode::Fused),
            "composed" => return Ok(OpsMode::Composed),
            _ => {}
        }
        let list = s.strip_prefix("composed:").ok_or_else(expected)?;
        let mut set = OpSet::default();
        for name in list.split(',').map(str::trim) {
            set = set.with(FusedOp::from_name(name).ok_or_else(expected)?);
        }
        Ok(OpsMode::ComposedOps(set))
    }
}
named_choice!(MapRouteChoice, "\"auto\", \"exact\" or \"gemm\"",
    Auto => "auto", Exact => "exact", Gemm => "gemm");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_ops_that_fell_back() {
        let r = DeviceRoutes::new(&Device::Cpu, MapRouteChoice::Auto);
        assert_eq!(r.ops_label(), "fused");
        r.set_composed(FusedOp::BatchNorm);
        r.set_composed(FusedOp::Acos);
        assert_eq!(r.ops_label(), "fused; composed: bn, acos");
        for op in FusedOp::ALL {
            r.set_composed(op);
        }
        assert_eq!(r.ops_label(), "composed");
    }

    /// On a GPU, `auto` sends GS and HR to the exact route from `GPU_EXACT_FROM` on (and says
    /// so in the label); `gemm` never does; LS and CP keep Newton–Schulz at every size.
    #[test]
    fn gpu_auto_routes_switch_gs_and_hr_to_exact_at_layer_size() {
        let auto = DeviceRoutes::for_host(false, MapRouteChoice::Auto);
        let gemm = DeviceRoutes::for_host(false, MapRouteChoice::Gemm);
        for map in [OrthMap::GramSchmidt, OrthMap::Householder] {
            assert_eq!(auto.map_route_at(map, 144), MapRoute::CholeskyQr2);
            assert_eq!(auto.map_route_at(map, GPU_EXACT_FROM), MapRoute::Exact);
            assert_eq!(auto.map_route_at(map, 1024), MapRoute::Exact);
            assert_eq!(gemm.map_route_at(map, 1024), MapRoute::CholeskyQr2);
            assert_eq!(
                auto.map_label(map),
                "cholesky-qr2 below d = 512, exact from there"
            );
            assert_eq!(gemm.map_label(map), "cholesky-qr2");
        }
        for map in [OrthMap::Lowdin, OrthMap::Cayley] {
            assert_eq!(auto.map_route_at(map, 1024), MapRoute::NewtonSchulz);
        }
        let mut switched = DeviceRoutes::for_host(false, MapRouteChoice::Auto);
        switched.set_exact(OrthMap::GramSchmidt);
        assert_eq!(
            switched.map_route_at(OrthMap::GramSchmidt, 12),
            MapRoute::Exact
        );
        assert_eq!(switched.map_label(OrthMap::GramSchmidt), "exact");
        let cpu = DeviceRoutes::for_host(true, MapRouteChoice::Auto);
        assert_eq!(cpu.map_label(OrthMap::Householder), "exact");
    }

    #[test]
    fn map_routes_follow_the_choice_and_the_device() {
        let auto = DeviceRoutes::new(&Device::Cpu, MapRouteChoice::Auto);
        let mut gemm = DeviceRoutes::new(&Device::Cpu, MapRouteChoice::Gemm);
        for map in OrthMap::ALL {
            assert_eq!(auto.map_route(map), MapRoute::Exact);
        }
        assert_eq!(gemm.map_label(OrthMap::Lowdin), "newton-schulz");
        assert_eq!(gemm.map_label(OrthMap::Cayley), "newton-schulz");
        assert_eq!(gemm.map_label(OrthMap::GramSchmidt), "cholesky-qr2");
        assert_eq!(gemm.map_label(OrthMap::Householder), "cholesky-qr2");
        gemm.set_exact(OrthMap::Householder);
        assert_eq!(gemm.map_label(OrthMap::Householder), "exact");
        assert_eq!(gemm.map_label(OrthMap::GramSchmidt), "cholesky-qr2");
    }

    #[test]
    fn choices_parse_and_name_the_expectation() {
        assert_eq!("composed".parse::<OpsMode>(), Ok(OpsMode::Composed));
        let pinned = "composed: bn, acos".parse::<OpsMode>().unwrap();
        let set = OpSet::default()
            .with(FusedOp::BatchNorm)
            .with(FusedOp::Acos);
        assert_eq!(pinned, OpsMode::ComposedOps(set));
        assert_eq!(pinned.to_string(), "composed: bn, acos");
        assert!("composed: bnn"
            .parse::<OpsMode>()
            .unwrap_err()
            .contains("conv2d, bn"));
        assert_eq!("gemm".parse::<MapRouteChoice>(), Ok(MapRouteChoice::Gemm));
        let err = "fast".parse::<OpsMode>().unwrap_err();
        assert!(
            err.contains("\"auto\", \"fused\", \"composed\" or \"composed: OP, …\""),
            "{err}"
        );
        assert_eq!(MapRouteChoice::Exact.to_string(), "exact");
    }

    #[test]
    fn fallbacks_are_drained_once_and_counted() {
        let r = DeviceRoutes::new(&Device::Cpu, MapRouteChoice::Gemm);
        let f = MapFallback {
            map: OrthMap::GramSchmidt,
            route: MapRoute::CholeskyQr2,
            reason: "Cholesky breakdown".into(),
        };
        r.record_fallback(f.clone());
        r.record_fallback(f.clone());
        assert_eq!(r.take_fallbacks(), vec![f.clone(), f]);
        assert!(r.take_fallbacks().is_empty());
        assert_eq!(r.fallback_count(), 2);
    }
}
