//! Convolution through the FFT, for large kernels on the CPU.
//!
//! A direct `k x k` convolution costs `k^2` multiply-accumulates per output element and input
//! channel; through the FFT the cost no longer depends on `k`. On the development CPU a 9 x 9
//! stride-1 conv with 8-64 channels trains (forward and backward) 2.2-2.7x faster this way
//! than through oneDNN, 3.7-5.8x at k = 11-15, and ResNet-20-16 at k = 9 about 2x
//! (`bench/fft_conv_probe.py`, `convsweep-bench`, docs/BENCHMARKS.md).
//!
//! It computes the same function as `conv2d`: PyTorch's cross-correlation with zero padding.
//! The input, zero-extended to `(H + 2p) x (W + 2p)`, is multiplied in the frequency domain
//! with the conjugate spectrum of the kernel, which is zero-extended to the same size and rolled
//! so that its tap `(p, p)` sits at the origin. Every output position reads only taps that
//! stay inside the extended grid, so the circular correlation equals the zero-padded one. Against
//! a float64 reference its float32 outputs and gradients are at least as accurate as oneDNN's
//! (tests in this module). Gradients come from autograd through the FFTs and the per-frequency
//! matrix product; a frozen weight gets none, as with `conv2d`.
//!
//! [`applies`] decides where it is used: on the CPU, for stride-1 convs without groups, with
//! `k >= 9`, "same" padding, at least 8 input channels and a kernel spectrum of at most
//! [`MAX_SPECTRUM_BYTES`]. Everything else, and every conv on CUDA (cuDNN picks its own
//! algorithms), stays on `conv2d`. [`Compute::fft_conv`](super::Compute) turns it off (the CLI's
//! `--fft-conv false`, `CONVSWEEP_FFT_CONV=0`); which convs took it is recorded with each trial's
//! results ([`super::Net::conv_algorithm`]).

use tch::{Device, Tensor};

/// Smallest kernel side that goes through the FFT.
pub const MIN_KERNEL: i64 = 9;
/// Fewest input channels that go through the FFT (the 3-channel stem is faster direct).
pub const MIN_CHANNELS: i64 = 8;

/// Largest kernel spectrum, in bytes, for which the FFT path is taken. The spectrum holds
/// `(h + 2p) * (w/2 + p + 1) * 2 c_in * 2 c_out` floats, about `2 (h + 2p)^2 / k^2` times the
/// weight; a very wide layer (an LC-block with a large expansion) stays on `conv2d` rather than
/// hold gigabytes of spectra.
pub const MAX_SPECTRUM_BYTES: i64 = 256 << 20;

/// Whether a conv with this weight `[c_out, c_in/groups, kh, kw]`, stride, padding and groups
/// goes through the FFT for an input `[b, c_in, h, w]` on `device`.
pub fn applies(device: Device, input: &[i64], weight: &[i64], stride: i64, padding: i64, groups: i64) -> bool {
    let (&[_, _, h, w], &[c_out, c_in, kh, kw]) = (input, weight) else {
        return false;
    };
    let spectrum_bytes = grid(h, padding) * (grid(w, padding) / 2 + 1) * 4 * c_in * c_out * 4;
    kh == kw
        && kh >= MIN_KERNEL
        && c_in >= MIN_CHANNELS
        && padding == kh / 2
        && spectrum_bytes <= MAX_SPECTRUM_BYTES
        && device == Device::Cpu
        && stride == 1
        && groups == 1
}

/// The kernel's spectrum as the real matrices that multiply the input spectrum: for each of the
/// `nh * (nw/2 + 1)` frequencies a `[2 c_in, 2 c_out]` block acting on interleaved
/// (real, imaginary) parts, holding the conjugate spectrum (correlation, not convolution).
///
/// A real matrix product keeps autograd on plain `sgemm` forward and backward; a complex one
/// went through a per-frequency loop of conjugated copies in its backward pass.
pub fn kernel_spectrum(weight: &Tensor, nh: i64, nw: i64, padding: i64) -> Tensor {
    let (c_out, c_in, kh, kw) = weight.size4().expect("fft conv weight is [o, c, k, k]");
    let spectrum = weight
        .constant_pad_nd([0, nw - kw, 0, nh - kh])
        .roll([-padding, -padding], [2, 3])
        .fft_rfft2(None::<&[i64]>, [2, 3], "backward")
        .permute([2, 3, 1, 0])
        .reshape([nh * (nw / 2 + 1), c_in, c_out]);
    let (re, im) = (spectrum.real(), -spectrum.imag());
    let from_re = Tensor::stack(&[&re, &im], -1);
    let from_im = Tensor::stack(&[-&im, re], -1);
    Tensor::stack(&[from_re, from_im], 2).reshape([nh * (nw / 2 + 1), 2 * c_in, 2 * c_out])
}

/// Side of the zero-extended grid the FFTs run on, for an input side and padding.
fn grid(side: i64, padding: i64) -> i64 {
    side + 2 * padding
}

/// `x.conv2d(weight, bias, stride 1, padding, dilation 1, groups 1)` through the FFT.
///
/// `x` is `[b, c_in, h, w]`, `weight` `[c_out, c_in, k, k]` with `k <= h + 2 * padding`; the
/// output is `[b, c_out, h + 2p - k + 1, w + 2p - k + 1]`.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, padding: i64) -> Tensor {
    let (_, _, h, w) = x.size4().expect("fft conv input is [b, c, h, w]");
    let kernel = kernel_spectrum(weight, grid(h, padding), grid(w, padding), padding);
    conv2d_spectrum(x, &kernel, weight.size()[2], bias, padding)
}

/// [`conv2d`] with the kernel's spectrum already computed by [`kernel_spectrum`] for this input
/// side; `k` is the kernel side.
pub fn conv2d_spectrum(x: &Tensor, kernel: &Tensor, k: i64, bias: Option<&Tensor>, padding: i64) -> Tensor {
    let (b, c_in, h, w) = x.size4().expect("fft conv input is [b, c, h, w]");
    let (nh, nw) = (grid(h, padding), grid(w, padding));
    let (ho, wo) = (nh - k + 1, nw - k + 1);
    let c_out = kernel.size()[2] / 2;
    // The FFTs run over the last two dims, where MKL needs no copies; the spectra are then laid
    // out [rows, columns, batch, channel, (re, im)] so that every frequency is one contiguous
    // matrix and the sum over c_in is one batched matrix product.
    let input = x
        .fft_rfft2([nh, nw].as_slice(), [2, 3], "backward")
        .permute([2, 3, 0, 1])
        .contiguous()
        .view_as_real()
        .reshape([nh * (nw / 2 + 1), b, 2 * c_in]);
    let y = input
        .bmm(kernel)
        .reshape([nh, nw / 2 + 1, b, c_out, 2])
        .view_as_complex()
        .permute([2, 3, 0, 1])
        .fft_irfft2([nh, nw].as_slice(), [2, 3], "backward")
        .narrow(2, 0, ho)
        .narrow(3, 0, wo)
        .contiguous();
    match bias {
        Some(bias) => y + bias.view([1, c_out, 1, 1]),
        None => y,
    }
}

/// The spectrum of a frozen kernel, kept between steps: a frozen weight never changes, so its
/// spectrum need not be recomputed every forward pass. The copy of the weight it came from is
/// compared with the weight on every use (a read of `c_out * c_in * k^2` floats), so that a
/// weight overwritten in place (a checkpoint loaded into the model) is never met with a stale
/// spectrum.
#[derive(Debug, Default)]
pub struct FrozenSpectrum(std::sync::Mutex<Option<Box<Cached>>>);

/// A spectrum and what it was computed from.
#[derive(Debug)]
struct Cached {
    weight: Tensor,
    grid: (i64, i64),
    spectrum: Tensor,
}

impl FrozenSpectrum {
    /// The spectrum of `weight` (which must not require grad) on the `nh x nw` grid.
    pub fn get(&self, weight: &Tensor, nh: i64, nw: i64, padding: i64) -> Tensor {
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_deref() {
            if c.grid == (nh, nw) && c.weight.equal(weight) {
                return c.spectrum.shallow_clone();
            }
        }
        let spectrum = tch::no_grad(|| kernel_spectrum(weight, nh, nw, padding));
        *cached = Some(Box::new(Cached {
            weight: weight.copy(),
            grid: (nh, nw),
            spectrum: spectrum.shallow_clone(),
        }));
        spectrum
    }
}

/// A conv through the FFT, using `frozen`'s cached spectrum when the weight gets no gradient.
pub fn conv2d_cached(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: i64,
    frozen: &FrozenSpectrum,
) -> Tensor {
    if weight.requires_grad() {
        return conv2d(x, weight, bias, padding);
    }
    let (_, _, h, w) = x.size4().expect("fft conv input is [b, c, h, w]");
    let kernel = frozen.get(weight, grid(h, padding), grid(w, padding), padding);
    conv2d_spectrum(x, &kernel, weight.size()[2], bias, padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn rel(a: &Tensor, reference: &Tensor) -> f64 {
        let a = a.to_kind(Kind::Double);
        (&a - reference).norm().double_value(&[]) / reference.norm().double_value(&[])
    }

    /// Output, input gradient and weight gradient of `f(x, w)` for the upstream gradient `g`.
    fn run(f: impl Fn(&Tensor, &Tensor) -> Tensor, x: &Tensor, w: &Tensor, g: &Tensor) -> [Tensor; 3] {
        let x = x.detach().set_requires_grad(true);
        let w = w.detach().set_requires_grad(true);
        let y = f(&x, &w);
        (&y * g.to_kind(y.kind())).sum(y.kind()).backward();
        [y.detach(), x.grad(), w.grad()]
    }

    #[test]
    fn matches_conv2d_and_is_as_accurate_against_float64() {
        tch::manual_seed(7);
        // (batch, c_in, c_out, h, w, k): square and not, several kernel sides and FFT sizes.
        for (b, c_in, c_out, h, w, k) in [
            (4, 8, 16, 32, 32, 9),
            (3, 16, 8, 16, 12, 11),
            (2, 12, 12, 8, 8, 15),
            (2, 9, 5, 7, 10, 9),
        ] {
            let x = Tensor::randn([b, c_in, h, w], (Kind::Double, Device::Cpu));
            let wt = Tensor::randn([c_out, c_in, k, k], (Kind::Double, Device::Cpu)) / ((c_in * k * k) as f64).sqrt();
            let g = Tensor::randn([b, c_out, h, w], (Kind::Double, Device::Cpu));
            let p = k / 2;
            let direct = |x: &Tensor, w: &Tensor| x.conv2d(w, None::<Tensor>, [1, 1], [p, p], [1, 1], 1);
            let reference = run(direct, &x, &wt, &g);
            let fft = run(
                |x, w| conv2d(x, w, None, p),
                &x.to_kind(Kind::Float),
                &wt.to_kind(Kind::Float),
                &g,
            );
            let onednn = run(direct, &x.to_kind(Kind::Float), &wt.to_kind(Kind::Float), &g);
            assert_eq!(fft[0].size(), reference[0].size());
            for (what, i) in [("output", 0), ("input gradient", 1), ("weight gradient", 2)] {
                let (e_fft, e_direct) = (rel(&fft[i], &reference[i]), rel(&onednn[i], &reference[i]));
                assert!(e_fft < 1e-6, "{what} k={k} {h}x{w}: fft error {e_fft:.1e}");
                assert!(
                    e_fft <= 2.0 * e_direct + 1e-7,
                    "{what} k={k}: fft {e_fft:.1e} vs direct {e_direct:.1e}"
                );
            }
        }
    }

    #[test]
    fn bias_is_added_per_channel_and_learns() {
        let x = Tensor::randn([2, 8, 10, 10], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([4, 8, 9, 9], (Kind::Float, Device::Cpu));
        let bias = Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).set_requires_grad(true);
        let y = conv2d(&x, &w, Some(&bias), 4);
        let expected = x.conv2d(&w, Some(&bias), [1, 1], [4, 4], [1, 1], 1);
        assert!(rel(&y, &expected.to_kind(Kind::Double)) < 1e-5);
        y.sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(bias.grad()).unwrap(), vec![200.0; 4]);
    }

    #[test]
    fn frozen_weight_gets_no_gradient() {
        let x = Tensor::randn([2, 8, 12, 12], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let w = Tensor::randn([8, 8, 9, 9], (Kind::Float, Device::Cpu));
        conv2d(&x, &w, None, 4).sum(Kind::Float).backward();
        assert!(!w.grad().defined());
        assert!(x.grad().defined());
    }

    #[test]
    fn frozen_spectrum_is_reused_and_follows_an_overwritten_weight() {
        let x = Tensor::randn([2, 8, 12, 12], (Kind::Float, Device::Cpu));
        let mut w = Tensor::randn([6, 8, 9, 9], (Kind::Float, Device::Cpu));
        let frozen = FrozenSpectrum::default();
        let fresh = conv2d(&x, &w, None, 4);
        assert!(conv2d_cached(&x, &w, None, 4, &frozen).equal(&fresh));
        assert!(
            conv2d_cached(&x, &w, None, 4, &frozen).equal(&fresh),
            "second use, from the cache"
        );
        // Another input side needs the spectrum on another grid.
        let small = x.narrow(2, 0, 10).narrow(3, 0, 10);
        assert!(conv2d_cached(&small, &w, None, 4, &frozen).equal(&conv2d(&small, &w, None, 4)));
        // A checkpoint loaded in place changes the weight under the cache.
        tch::no_grad(|| w.copy_(&Tensor::randn([6, 8, 9, 9], (Kind::Float, Device::Cpu))));
        let reloaded = conv2d_cached(&x, &w, None, 4, &frozen);
        assert!(reloaded.equal(&conv2d(&x, &w, None, 4)));
        assert!(!reloaded.equal(&fresh));
    }

    #[test]
    fn same_inputs_give_bitwise_equal_results() {
        tch::manual_seed(3);
        let x = Tensor::randn([4, 16, 32, 32], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([16, 16, 9, 9], (Kind::Float, Device::Cpu));
        let g = Tensor::randn([4, 16, 32, 32], (Kind::Float, Device::Cpu));
        let a = run(|x, w| conv2d(x, w, None, 4), &x, &w, &g);
        let b = run(|x, w| conv2d(x, w, None, 4), &x, &w, &g);
        for (a, b) in a.iter().zip(&b) {
            assert!(a.equal(b));
        }
    }

    #[test]
    fn applies_only_where_it_is_faster_and_equal() {
        let (cpu, x16, x32) = (Device::Cpu, [128, 16, 32, 32], [128, 32, 16, 16]);
        assert!(applies(cpu, &x16, &[16, 16, 9, 9], 1, 4, 1));
        assert!(applies(cpu, &x32, &[64, 32, 15, 15], 1, 7, 1));
        assert!(!applies(cpu, &x16, &[16, 16, 7, 7], 1, 3, 1), "k = 7 is faster direct");
        assert!(
            !applies(cpu, &[128, 3, 32, 32], &[16, 3, 9, 9], 1, 4, 1),
            "3-channel stem"
        );
        assert!(!applies(cpu, &x16, &[32, 16, 9, 9], 2, 4, 1), "stride 2");
        assert!(!applies(cpu, &x16, &[16, 1, 9, 9], 1, 4, 16), "depthwise");
        assert!(!applies(cpu, &x16, &[16, 16, 9, 9], 1, 0, 1), "unpadded");
        assert!(
            !applies(Device::Cuda(0), &x16, &[16, 16, 9, 9], 1, 4, 1),
            "cuDNN on CUDA"
        );
        // ResNet-LC-20-16x8 at k = 9: 27 MiB of spectrum; x128: 440 MiB, too much.
        assert!(applies(cpu, &x16, &[128, 16, 9, 9], 1, 4, 1));
        assert!(!applies(cpu, &x16, &[2048, 16, 9, 9], 1, 4, 1), "spectrum over 256 MiB");
    }
}
