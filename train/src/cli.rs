//! Command-line flags shared by `delphi-train` and `delphi-plan`: one
//! definition, so that both accept the same data flags with the same
//! defaults and help.

use std::path::PathBuf;

use crate::data::{load_limited, Dataset, DatasetKind, Result};

/// Which data, and how much of it.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Data")]
pub struct DataArgs {
    /// fashion-mnist, fashion-mnist-32 (padded to 3×32×32 for CIFAR networks
    /// such as resnet32), cifar10, cifar100, or your own data: a folder with
    /// one sub-folder of images per class (PNG, JPEG, BMP; optionally under
    /// train/ and test/ or val/), a .npz file (x and y, or x_train, y_train,
    /// x_test, y_test), or a folder of such .npy files. PATH:HxW resizes every
    /// image to H×W, PATH:CxHxW also converts it to C channels. See docs/data.md.
    #[arg(long, default_value = "fashion-mnist", value_name = "NAME|PATH[:[Cx]HxW]")]
    pub dataset: DatasetKind,
    /// Folder with the dataset's files (default: $DELPHI_DATA, then Debian's
    /// /usr/share/datasets/fashion-mnist for Fashion-MNIST).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use only the first N training images (after the validation split).
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Validation images carved from the training set.
    #[arg(long, default_value_t = 5000)]
    pub valid_size: usize,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
}

impl DataArgs {
    /// Loads the data these flags name (`seed` draws the validation split).
    pub fn load(&self, seed: u64) -> Result<Dataset> {
        load_limited(
            self.dataset.clone(),
            self.data_dir.as_deref(),
            self.valid_size,
            seed,
            self.train_limit,
            self.test_limit,
        )
    }
}
