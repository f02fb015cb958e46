"""Independent float64 NumPy implementation of method §1-3, written literally
(fftshift, centred frequency grid, full spectrum) so that it shares no code or
shortcut with the package under test."""
import numpy as np


def centred_high_mask(h, w, ratio):
    fu = np.fft.fftshift(np.fft.fftfreq(h) * h)
    fv = np.fft.fftshift(np.fft.fftfreq(w) * w)
    low = (np.abs(fu)[:, None] < ratio * h / 2) & (np.abs(fv)[None, :] < ratio * w / 2)
    return ~low


def spectrum(img):
    return np.fft.fftshift(np.fft.fft2(img, norm="ortho"))


def stats(img, ratio, domain):
    """img: [H, W] -> (mu, sigma) of the high band."""
    band = spectrum(img)[centred_high_mask(*img.shape, ratio)]
    if domain == "amplitude":
        band = np.abs(band)
    mu = np.mean(band).real
    return mu, np.mean(np.abs(band - mu))


def band_stats(x, ratio=0.5, domain="complex"):
    """x: [B, C, H, W] -> mu, sigma [B, C]."""
    b, c = x.shape[:2]
    out = np.array([[stats(x[i, j], ratio, domain) for j in range(c)] for i in range(b)])
    return out[..., 0], out[..., 1]


def shr(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio=0.5, domain="complex"):
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    b, c, h, w = x.shape
    mask = centred_high_mask(h, w, ratio)
    for i in range(b):
        for j in range(c):
            mk, sk = mu_bank[i, :, j].astype(np.float64), sigma_bank[i, :, j].astype(np.float64)
            mu_hat = mk.mean() + eps_mu[i, j] * np.sqrt(np.mean((mk - mk.mean()) ** 2))
            sigma_hat = max(sk.mean() + eps_sigma[i, j] * np.sqrt(np.mean((sk - sk.mean()) ** 2)), 0.0)
            spec = spectrum(x[i, j])
            mu_s, sigma_s = stats(x[i, j], ratio, domain)
            vals = spec[mask]
            if domain == "complex":
                norm = (vals - mu_s) / sigma_s if sigma_s > 0 else np.zeros_like(vals)
                spec[mask] = sigma_hat * norm + mu_hat
            else:
                amp = np.abs(vals)
                norm = (amp - mu_s) / sigma_s if sigma_s > 0 else np.zeros_like(amp)
                new_amp = np.maximum(sigma_hat * norm + mu_hat, 0.0)
                phase = np.where(amp > 0, vals / np.where(amp > 0, amp, 1), 1.0)
                spec[mask] = new_amp * phase
            out[i, j] = np.fft.ifft2(np.fft.ifftshift(spec), norm="ortho").real
    return out
