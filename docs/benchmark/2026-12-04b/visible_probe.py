"""How much of each FAST mask does the model visibly change? (threshold sweep on n pairs of `make synthesize`)"""
import json, sys
import torch
from fast_lightning.config import load_config
from fast_lightning.data import make_split, read_class
from fast_lightning.sampling import build_sampler
from fast_lightning.synthesis.checkpoints import load_synthesis_model
from fast_lightning.synthesis.predictor import synthesis_batch
from fast_lightning.synthesis.windowed import WindowedFastSynthesizer, visible_change
from fast_lightning.data.io import resize_tensor_image
from fast_lightning.data.mask_resize import resize_mask
from fast_lightning.seeding import generator_for

cls, root, ckpt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = load_config([f"class_name={cls}", f"data_root={root}", "profile=cpu"])
split = make_split(read_class(root, cls), cfg.data.generator_fraction, cfg.data.val_fraction)
model, meta = load_synthesis_model(cfg, list(split.types), ckpt)
synth = WindowedFastSynthesizer(model.eval(), build_sampler(cfg.sampling), meta, autocast_dtype=torch.bfloat16)
images, masks, cond, _ = synthesis_batch(cfg, split, list(split.types), n, 0)
R = synth.resolution
wins, wm = [], []
for img, m in zip(images, masks):
    w = synth.window_for(m); ys, xs = w.slices()
    wins.append(resize_tensor_image(img[None, :, ys, xs].float(), (R, R))[0])
    wm.append(resize_mask((m[None, :, ys, xs] > 0.5).float(), (R, R))[0])
wins, wm = torch.stack(wins), torch.stack(wm)
out = []
for s in range(0, n, 16):
    g = [generator_for("synthesis_noise", 0, i) for i in range(s, min(n, s + 16))]
    out.append(synth.run_windows(wins[s:s+16], wm[s:s+16], cond[s:s+16], g).cpu())
gen = torch.cat(out)
res = {}
for t in (0.02, 0.04, 0.06, 0.08, 0.12):
    seen = visible_change(gen, wins, t) & (wm > 0.5)
    kept = seen.flatten(1).sum(1) / wm.flatten(1).sum(1).clamp(min=1)
    per_type = {split.types[int(c) - 1] if int(c) > 0 else "normal": [] for c in cond}
    for c, k in zip(cond, kept):
        per_type[split.types[int(c) - 1]].append(float(k))
    res[t] = {"mean_kept": float(kept.mean()), "share_pairs_below_10pct": float((kept < 0.1).float().mean()),
              "per_type": {k: round(sum(v) / len(v), 3) for k, v in per_type.items() if v}}
# ring vs inside contrast for reference: std of source inside mask
d = (gen - wins).abs().amax(1, keepdim=True)
print(json.dumps({"types": list(split.types), "median_abs_change_in_mask": float(d[wm > 0.5].median()),
                  "sweep": res}, indent=1))
