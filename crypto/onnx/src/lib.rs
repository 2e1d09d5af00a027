//! Imports an ONNX model — as PyTorch's exporters (TorchScript or dynamo)
//! or Keras through tf2onnx write them — into the DELPHI network
//! description, so a provider can plan and serve its own trained network.
//!
//! The model is parsed with the protobuf types of Burn's `onnx-ir` crate;
//! the translation into the description is this crate's. Supported:
//!
//! | ONNX | becomes |
//! |---|---|
//! | `Conv` (group 1, no dilation, square kernel, equal strides 1 or 2, the same padding on every side) | `conv2d` |
//! | `Gemm`, `MatMul` (+ `Add` of a bias) on a vector | `dense` |
//! | `BatchNormalization` after a conv/dense | `batch_norm` (a per-channel scale or shift elsewhere folds into the layer before it) |
//! | `Relu` | `activation relu` |
//! | `a·x·x + b·x + c` written with `Mul`/`Add`/`Sub`/`Div`/`Neg`/`Pow(x, 2)` and scalar constants | `activation quad {a, b, c}` |
//! | `AveragePool` (no padding), `GlobalAveragePool`, `ReduceMean` over the spatial axes | `avg_pool` |
//! | `Add` of two tensors | `residual` |
//! | `Flatten`, `Reshape`/`Squeeze`/`Unsqueeze` to a vector (shape arithmetic with `Shape`, `Gather`, `Concat`, … is folded) | `flatten` (or nothing when it is already 1×1) |
//! | `Identity`, `Dropout`, `Cast` to float | nothing |
//! | a per-channel scale and shift of the input (`Sub`/`Div` by constants) | the description's input normalisation |
//! | `Transpose` NHWC↔NCHW around a Keras model's input and flatten | the input is taken as CHW; the dense layer's columns are reordered |
//! | a final `Softmax`/`LogSoftmax` | dropped: the engine returns logits, the class is the same |
//!
//! Everything else (MaxPool, Sigmoid, Concat, grouped convolutions, …) is
//! refused with [`OnnxError::Unsupported`], which names the node, its op
//! type and what to use instead.

pub mod proto;

mod graph;

use std::path::{Path, PathBuf};

use delphi_net::{NetError, Network, Normalization};

pub use graph::import_model;
pub use proto::{Const, Data};

/// The largest ONNX file read: 1 GiB.
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// The oldest default-domain opset accepted (13 and later are what the
/// exporters write today; 9–12 differ only in details handled here).
pub const MIN_OPSET: i64 = 9;

/// What can go wrong importing a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnnxError {
    /// Reading the file failed.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("{path} is {bytes} bytes (at most {MAX_FILE_BYTES})")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// The bytes are not an ONNX model.
    #[error("not an ONNX model: {0}")]
    Parse(String),
    /// A node the description cannot express.
    #[error("node {node:?} ({op}): {reason}")]
    Unsupported {
        /// The node's name (or its output's, when it has none).
        node: String,
        /// Its op type.
        op: String,
        /// Why, and what to use instead.
        reason: String,
    },
    /// The graph as a whole (inputs, outputs, opset) is not usable.
    #[error("{0}")]
    Model(String),
    /// An initializer or constant could not be read.
    #[error("tensor {name:?}: {reason}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The result did not validate as a description.
    #[error(transparent)]
    Net(#[from] NetError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, OnnxError>;

/// Settings of an import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The description's name (default: the graph's name, else the file's).
    pub name: Option<String>,
    /// The normalisation the model expects of its raw input, when the
    /// provider knows it (an ONNX file does not say). A normalisation the
    /// graph performs itself is combined with it.
    pub normalization: Option<Normalization>,
    /// The dataset the model was trained on, for the metadata.
    pub dataset: Option<String>,
}

/// An imported network and what the import did that a user should know.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The description (weights inline).
    pub network: Network,
    /// Notes: dropped softmax, NHWC input, folded normalisation, ….
    pub notes: Vec<String>,
}

/// Imports the ONNX model in `path`.
pub fn import(path: &Path, options: &ImportOptions) -> Result<Imported> {
    let meta = std::fs::metadata(path)
        .map_err(|source| OnnxError::Io { path: path.to_path_buf(), source })?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(OnnxError::TooLarge { path: path.to_path_buf(), bytes: meta.len() });
    }
    let bytes =
        std::fs::read(path).map_err(|source| OnnxError::Io { path: path.to_path_buf(), source })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "imported".into());
    let mut options = options.clone();
    if options.name.is_none() {
        options.name = Some(stem);
    }
    let file = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    import_bytes(&bytes, &file, &options)
}

/// Imports an ONNX model from its bytes (`file` names it in the metadata).
pub fn import_bytes(bytes: &[u8], file: &str, options: &ImportOptions) -> Result<Imported> {
    use onnx_ir::Message;
    let model = onnx_ir::ModelProto::parse_from_bytes(bytes)
        .map_err(|e| OnnxError::Parse(e.to_string()))?;
    import_model(&model, file, options)
}

/// Whether `path` names an ONNX model (by its extension).
pub fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Loads a network from a description (`.json`) or an ONNX model
/// (`.onnx`), validated, with its weights.
pub fn load_network(path: &Path) -> std::result::Result<Network, OnnxError> {
    if is_onnx(path) {
        Ok(import(path, &ImportOptions::default())?.network)
    } else {
        Ok(Network::load(path)?)
    }
}
