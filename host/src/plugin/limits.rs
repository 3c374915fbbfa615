//! Per-call resource limits of a plugin, and the platform maxima a vendor's limits must fit in.

use std::time::Duration;

/// The limits one plugin call runs under. Vendors choose theirs in their policy template, within
/// [`PluginLimits::platform_max`]; everything is set before any guest code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    /// Fuel (roughly, WebAssembly instructions) for instantiation plus the call. Deterministic:
    /// the same input always uses the same fuel.
    pub fuel: u64,
    /// Wall-clock budget for instantiation plus the call, including time blocked in host calls.
    pub deadline: Duration,
    /// Linear memory, summed over the component's memories.
    pub memory_bytes: usize,
    /// Encoded size of the input given to the plugin.
    pub max_input_bytes: usize,
    /// Encoded size of the verdict a plugin may return.
    pub max_output_bytes: usize,
    /// Bytes of stdout/stderr kept per call; the rest is dropped and the log marked truncated.
    pub log_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            fuel: 50_000_000,
            deadline: Duration::from_millis(10),
            memory_bytes: 32 << 20,
            max_input_bytes: 64 << 10,
            max_output_bytes: 16 << 10,
            log_bytes: 4 << 10,
        }
    }
}

impl PluginLimits {
    /// The largest limits the platform lets any vendor configure.
    pub fn platform_max() -> Self {
        Self {
            fuel: 1_000_000_000,
            deadline: Duration::from_millis(250),
            memory_bytes: 128 << 20,
            max_input_bytes: 1 << 20,
            max_output_bytes: 64 << 10,
            log_bytes: 64 << 10,
        }
    }

    /// The limits `describe()` runs under when a plugin is uploaded, and when a vendor checks one
    /// with `approval-host plugin check`: the defaults, with the platform's longest deadline.
    /// Uploads are rare and may land on a busy host, and a large component (CPython, built by
    /// componentize-py) can take more than the default 10 ms to start on a slow one.
    pub fn at_upload() -> Self {
        Self {
            deadline: Self::platform_max().deadline,
            ..Self::default()
        }
    }

    /// These limits, each clamped to at most the matching field of `max`.
    pub fn clamped_to(self, max: &PluginLimits) -> Self {
        Self {
            fuel: self.fuel.min(max.fuel),
            deadline: self.deadline.min(max.deadline),
            memory_bytes: self.memory_bytes.min(max.memory_bytes),
            max_input_bytes: self.max_input_bytes.min(max.max_input_bytes),
            max_output_bytes: self.max_output_bytes.min(max.max_output_bytes),
            log_bytes: self.log_bytes.min(max.log_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vendor_cannot_exceed_the_platform_maxima() {
        let greedy = PluginLimits {
            fuel: u64::MAX,
            deadline: Duration::from_secs(3600),
            memory_bytes: usize::MAX,
            max_input_bytes: 1,
            max_output_bytes: usize::MAX,
            log_bytes: 10,
        };
        let max = PluginLimits::platform_max();
        let got = greedy.clamped_to(&max);
        assert_eq!(got.fuel, max.fuel);
        assert_eq!(got.deadline, max.deadline);
        assert_eq!(got.memory_bytes, max.memory_bytes);
        assert_eq!(got.max_input_bytes, 1, "tighter limits are kept");
        assert_eq!(got.log_bytes, 10);
    }

    #[test]
    fn describe_at_upload_gets_the_longest_deadline_and_default_budgets() {
        let upload = PluginLimits::at_upload();
        assert_eq!(upload.deadline, Duration::from_millis(250));
        assert_eq!(
            PluginLimits {
                deadline: PluginLimits::default().deadline,
                ..upload
            },
            PluginLimits::default()
        );
    }
}
