//! Which device a run trains on.

use crate::{Result, StageError};
use candle_core::Device;
use opt_core::ops::routes::{MapRouteChoice, OpsMode};
use opt_core::ops::self_check::{check_and_install, CheckedDevice};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// `auto` picks CUDA when this build has it and a GPU is present, else the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    format!("expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\", found {s:?}")
                }),
        }
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The concrete device kind this choice means on this build and machine (`auto` resolved).
    pub fn resolve(self) -> DeviceChoice {
        match self {
            Self::Auto if cuda_device_present() => Self::Cuda(0),
            Self::Auto => Self::Cpu,
            other => other,
        }
    }

    pub fn open(self) -> Result<Device> {
        match self.resolve() {
            Self::Cpu | Self::Auto => Ok(Device::Cpu),
            Self::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(StageError::Device(format!(
                        "run.device = \"cuda:{n}\" but this `orthopt` was built without CUDA support \
                         (the cargo feature `cuda`); set run.device = \"cpu\""
                    )));
                }
                Device::new_cuda(n).map_err(|e| {
                    StageError::Device(format!(
                        "cannot open CUDA device {n}: {}",
                        without_backtrace(e)
                    ))
                })
            }
        }
    }
}

/// Whether this build has CUDA and the machine a device it can open (asked once per process):
/// `auto` means the GPU only where there is one, also for a CUDA build on a CPU machine.
fn cuda_device_present() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| candle_core::utils::cuda_is_available() && Device::new_cuda(0).is_ok())
}

/// candle's message without the backtrace it attaches (a user needs the cause, not frames).
fn without_backtrace(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
        other => other.to_string(),
    }
}

/// Serde for a choice spelled as its name (`run.ops = "composed"`): opt-core's route choices
/// have `Display`/`FromStr` and no serde.
pub mod named {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err = String>,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Whether `value` is its type's default (a key field absent when default keeps every older
/// recipe's cache key).
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Opens `choice`'s device and runs its self-check (`opt_core::ops::self_check`) under `ops`
/// and `map_route`, installing the routes the check decided for everything that runs on the
/// device from now on; each op or map it switched is a warning through `warn`. An error when the
/// device cannot be opened, or in `fused` mode when the check failed.
pub fn open_checked(
    choice: DeviceChoice,
    ops: OpsMode,
    map_route: MapRouteChoice,
    warn: &dyn Fn(&str),
) -> Result<(Device, CheckedDevice)> {
    let device = choice.open()?;
    let checked = check_and_install(&device, ops, map_route).map_err(StageError::Device)?;
    for w in &checked.warnings {
        warn(w);
    }
    Ok((device, checked))
}
