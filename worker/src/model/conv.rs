//! [`Conv2d`], the conv every model family builds (libtorch's `conv2d`, or the FFT for large
//! frozen kernels on the CPU), and the record of which algorithm each conv ran ([`ConvPath`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tch::Tensor;
use tch::nn;

/// The algorithm a conv's last forward pass used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConvPath {
    /// Not run yet.
    NotRun = 0,
    /// libtorch's `conv2d` (oneDNN on the CPU, cuDNN on CUDA).
    Direct = 1,
    /// Through the FFT ([`super::fftconv`]).
    Fft = 2,
}

/// Where a conv records the [`ConvPath`] it took; the model reads every conv's.
#[derive(Debug, Clone, Default)]
pub struct ConvRecord(Arc<AtomicU8>);

impl ConvRecord {
    fn set(&self, path: ConvPath) {
        self.0.store(path as u8, Ordering::Relaxed);
    }

    /// The path of the conv's last forward pass.
    pub fn get(&self) -> ConvPath {
        match self.0.load(Ordering::Relaxed) {
            1 => ConvPath::Direct,
            2 => ConvPath::Fft,
            _ => ConvPath::NotRun,
        }
    }
}

/// A conv. Its weight is frozen (not in the optimiser, no gradient) when the trial freezes
/// spatial filters and its kernel has more than one element; a bias always learns.
#[derive(Debug)]
pub struct Conv2d {
    /// `[c_out, c_in/groups, k, k]`.
    pub weight: Tensor,
    /// `[c_out]`, when the conv has one.
    pub bias: Option<Tensor>,
    pub(super) stride: i64,
    pub(super) padding: i64,
    pub(super) groups: i64,
    /// Whether the FFT may be used where it [applies](super::fftconv::applies).
    pub(super) fft: bool,
    /// The frozen weight's spectrum, when the conv runs through the FFT.
    pub(super) spectrum: super::fftconv::FrozenSpectrum,
    /// The algorithm the last forward pass used.
    pub(super) record: ConvRecord,
}

impl Conv2d {
    /// The groups of the conv.
    pub fn groups(&self) -> i64 {
        self.groups
    }
}

impl nn::Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let (weight, input) = (self.weight.size(), xs.size());
        if self.fft && super::fftconv::applies(xs.device(), &input, &weight, self.stride, self.padding, self.groups) {
            self.record.set(ConvPath::Fft);
            let (bias, padding) = (self.bias.as_ref(), self.padding);
            return super::fftconv::conv2d_cached(xs, &self.weight, bias, padding, &self.spectrum);
        }
        self.record.set(ConvPath::Direct);
        xs.conv2d(
            &self.weight,
            self.bias.as_ref(),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            self.groups,
        )
    }
}
