//! Errors of the plugin layer. A [`PluginError`] separates the guest's fault (audited against
//! the vendor, turned into its fail mode) from the host's; an [`UploadError`] tells a vendor why
//! a component was refused, in words they can act on.

use std::time::Duration;

/// Whose fault a failed call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The plugin misbehaved: audited against the vendor.
    Guest,
    /// The host could not run the plugin (overload, a bug, a request too large to pass).
    Host,
}

/// Why a plugin call produced no usable verdict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("the plugin trapped: {message}")]
    Trap { message: String },
    #[error("the plugin overflowed its stack")]
    StackOverflow,
    #[error("the plugin used all of its {limit} fuel")]
    OutOfFuel { limit: u64 },
    #[error("the plugin did not answer within {limit:?}")]
    Deadline { limit: Duration },
    #[error("the plugin asked for more than its {limit_bytes} bytes of memory")]
    OutOfMemory { limit_bytes: usize },
    #[error("the plugin's answer is {bytes} bytes; at most {limit} are accepted")]
    OutputTooLarge { bytes: usize, limit: usize },
    #[error("the plugin's verdict is malformed: {problem}")]
    MalformedVerdict { problem: String },
    #[error("the plugin could not decide: {message}")]
    Declined { message: String },
    #[error("the request is {bytes} bytes encoded; plugins accept at most {limit}")]
    InputTooLarge { bytes: usize, limit: usize },
    #[error(
        "the plugin is paused until {until_ms} (ms since the Unix epoch): its last {failures} \
         calls in a row ran out of time or fuel"
    )]
    Suspended { until_ms: u64, failures: u32 },
    #[error("no plugin slot was free within {waited:?}")]
    Busy { waited: Duration },
    #[error("the host failed to run the plugin: {message}")]
    Host { message: String },
}

impl PluginError {
    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        match self {
            PluginError::InputTooLarge { .. }
            | PluginError::Busy { .. }
            | PluginError::Host { .. } => Fault::Host,
            _ => Fault::Guest,
        }
    }

    /// A stable machine-readable code for records and APIs.
    pub fn code(&self) -> &'static str {
        match self {
            PluginError::Trap { .. } => "plugin_trap",
            PluginError::StackOverflow => "plugin_stack_overflow",
            PluginError::OutOfFuel { .. } => "plugin_out_of_fuel",
            PluginError::Deadline { .. } => "plugin_deadline",
            PluginError::OutOfMemory { .. } => "plugin_out_of_memory",
            PluginError::OutputTooLarge { .. } => "plugin_output_too_large",
            PluginError::MalformedVerdict { .. } => "plugin_malformed_verdict",
            PluginError::Declined { .. } => "plugin_declined",
            PluginError::InputTooLarge { .. } => "plugin_input_too_large",
            PluginError::Suspended { .. } => "plugin_suspended",
            PluginError::Busy { .. } => "plugin_busy",
            PluginError::Host { .. } => "plugin_host_error",
        }
    }
}

/// Why an uploaded component was refused. Every message names what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("the component is {bytes} bytes; the limit is {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
    #[error("the upload is empty")]
    Empty,
    #[error("the upload is not WebAssembly (it does not start with the bytes \\0asm)")]
    NotWasm,
    #[error(
        "the upload is a core WebAssembly module, not a component: build it for the \
         wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("the component is not valid WebAssembly: {detail}")]
    Invalid { detail: String },
    #[error(
        "the component does not implement the `risk-classifier` world: it must export \
         `{expected}`, but it exports {found}"
    )]
    MissingExport {
        expected: &'static str,
        found: String,
    },
    #[error("the component's `{export}` export does not match wit/risk-classifier.wit: {detail}")]
    WrongSignature {
        export: &'static str,
        detail: String,
    },
    #[error(
        "the component imports `{import}`, which the host does not provide: plugins may import \
         only WASI interfaces (wasi:*)"
    )]
    ForbiddenImport { import: String },
    #[error("the component's describe() failed: {0}")]
    DescribeFailed(PluginError),
    #[error("the component's describe() answer is not acceptable: {problem}")]
    BadDescription { problem: String },
    #[error("the component's signature does not verify against the vendor's registered key")]
    BadSignature,
    #[error("the vendor has registered a signing key, so uploads must be signed")]
    SignatureRequired,
}

impl UploadError {
    /// A stable machine-readable code for APIs.
    pub fn code(&self) -> &'static str {
        match self {
            UploadError::TooLarge { .. } => "plugin_too_large",
            UploadError::SignatureRequired | UploadError::BadSignature => "plugin_signature",
            _ => "plugin_invalid",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_faults_are_not_blamed_on_the_vendor() {
        assert_eq!(
            PluginError::Busy {
                waited: Duration::ZERO
            }
            .fault(),
            Fault::Host
        );
        assert_eq!(PluginError::StackOverflow.fault(), Fault::Guest);
        assert_eq!(
            PluginError::OutOfFuel { limit: 1 }.code(),
            "plugin_out_of_fuel"
        );
    }
}
