"""The exploration that chose the candidate noise scores (BENCHMARKS.md, "Finding wrong answers").

``python scripts/explore_noise_visits.py run EPOCHS SEED``: one uniform SmolLM2 run on the evidence training set
(LoRA, the evidence benchmark's configuration, no evaluation) for EPOCHS epochs, recording every training visit's
per-token details with a hook of its own: the given token's log-probability and the exact AUM margin (the given
token's logit minus the best other token's, from the LM head applied to the backbone's hidden states at the
trained positions: a second head pass the package does not make), whole-answer correctness. Written to
``bench_results/explore/visits_e<EPOCHS>_s<SEED>.pkl`` (~19 minutes for 4 epochs on 2 cores).

``python scripts/explore_noise_visits.py analyse PKL E [E ...]``: AUROC per domain of each candidate score, reading
only the visits of the first E epochs.
"""

import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's root: benchmarks/ is not installed
from benchmarks.evidence import EvidenceConfig, load_data, build_model, sft_config
from trl import SFTTrainer
from sft_callbacks import TrainingDynamicsCallback
from sft_callbacks.engine import row_keys

def record(epochs: int, seed: int, lr=None):
    torch.set_num_threads(2)
    cfg = EvidenceConfig(seeds=[seed], lr=lr)
    data = load_data(cfg)
    train = data["train"]
    steps = int(np.ceil(len(train) * epochs / cfg.batch_size))
    model, tok, peft = build_model(cfg, train, seed)
    dyn = TrainingDynamicsCallback()
    args = sft_config(cfg, f"bench_results/explore/run{seed}", seed, steps, evaluate=False)
    args.logging_steps = 50
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok, callbacks=[dyn], peft_config=peft)
    base = trainer.model.get_base_model()
    W = base.lm_head.weight
    stash = {}
    base.model.register_forward_hook(lambda m, a, o: stash.__setitem__("h", o.last_hidden_state))
    visits = []
    state = {"step": 0}
    class StepCB(__import__("transformers").TrainerCallback):
        def on_step_end(self, args, st, control, **kw):
            state["step"] = st.global_step
    trainer.add_callback(StepCB())
    def hook(module, a, kw, out):
        if not module.training:
            return
        with torch.no_grad():
            ids, labels, pos = kw["input_ids"], kw["labels"], kw.get("position_ids")
            target = labels[:, 1:]; mask = target != -100
            h = stash["h"][:, :-1][mask].float()
            logits = h @ W.float().t()
            t = target[mask]
            lp = torch.log_softmax(logits, -1)
            lpt = lp.gather(1, t[:, None])[:, 0]
            other = logits.clone(); other.scatter_(1, t[:, None], float("-inf"))
            margin = logits.gather(1, t[:, None])[:, 0] - other.max(1).values
            top1 = margin > 0
            fused = out.log_probs[:, :][mask].float()
            n_seg = int((pos[0] == 0).sum())
            keys = row_keys.segment_keys(ids, labels, pos, n_seg)
            seg = row_keys.segment_ids(pos)[1:][mask[0]]
            for s in range(n_seg):
                sel = seg == s
                if sel.any():
                    visits.append((int(keys[s].item()), state["step"], lpt[sel].numpy().astype(np.float32), margin[sel].numpy().astype(np.float32),
                                   top1[sel].numpy(), fused[sel].numpy().astype(np.float32), t[sel].numpy()))
    trainer.model.register_forward_hook(hook, with_kwargs=True)
    t0 = time.time()
    trainer.train()
    print("train s", time.time() - t0, "steps", steps, flush=True)
    keys = np.array([v[0] for v in visits], dtype=np.int64).view(np.uint64)
    sess = dyn.session
    uid = sess.tracker.index.lookup(keys)
    user_uid = sess.tracker.index.user_uid()
    # map uid -> user row (first row with that uid)
    rows_of_uid = {}
    for r, u in enumerate(user_uid):
        rows_of_uid.setdefault(int(u), []).append(r)
    out = {"visits": [(rows_of_uid.get(int(u), [-1]), *v[1:]) for u, v in zip(uid, visits)],
           "corrupted": np.asarray(train["corrupted"]), "domain": np.asarray(train["domain"]), "steps": steps,
           "epoch_steps": len(train) / cfg.batch_size}
    with open(f"bench_results/explore/visits_e{epochs}_s{seed}.pkl", "wb") as fh:
        pickle.dump(out, fh)
    print("saved", len(visits))


# analysis
from benchmarks.scores import auroc

def analyse(path, epochs_list):
    d = pickle.load(open(path, "rb"))
    cor, dom = d["corrupted"], d["domain"]; n = len(cor); es = d["epoch_steps"]
    V = d["visits"]
    def scores(max_epoch, cut=None):
        cut = max_epoch if cut is None else cut
        S = {}
        per = [[] for _ in range(n)]
        # per-step mean loss (time normalisation)
        step_loss = {}
        for v in V:
            step_loss.setdefault(v[1], []).append(-v[2].mean())
        step_med = {k: np.median(x) for k, x in step_loss.items()}
        step_cmed = {k: np.median(np.exp(-np.array(x))) for k, x in step_loss.items()}
        sm = {}
        for v in V: sm.setdefault(v[1], []).append(np.exp(v[2].min()))
        step_mmed = {k: np.median(x) for k, x in sm.items()}
        for v in V:
            if v[1] >= max_epoch * es: continue
            for r in v[0]:
                per[r].append(v)
        def agg(f, sel=lambda vs: vs):
            out = np.full(n, np.nan)
            for r in range(n):
                vs = sel(per[r])
                if vs: out[r] = f(vs)
            return out
        S["loss_first"] = agg(lambda vs: -vs[0][2].mean())
        S["loss_first_sum"] = agg(lambda vs: -vs[0][2].sum())
        S["loss_first_tok0"] = agg(lambda vs: -vs[0][2][0])
        S["loss_last"] = agg(lambda vs: -vs[-1][2].mean())
        S["loss_mean"] = agg(lambda vs: np.mean([-v[2].mean() for v in vs]))
        S["loss_mean_sum"] = agg(lambda vs: np.mean([-v[2].sum() for v in vs]))
        S["loss_mean_tok0"] = agg(lambda vs: np.mean([-v[2][0] for v in vs]))
        S["loss_max_tok"] = agg(lambda vs: np.mean([-v[2].min() for v in vs]))
        S["conf_mean(1-)"] = agg(lambda vs: 1 - np.mean([np.exp(v[2].mean()) for v in vs]))
        S["wrong_count"] = agg(lambda vs: sum(not v[4].all() for v in vs) + 1e-3 * np.mean([-v[2].mean() for v in vs]))
        S["wrong_frac"] = agg(lambda vs: np.mean([not v[4].all() for v in vs]) + 1e-3 * np.mean([-v[2].mean() for v in vs]))
        S["aum_neg"] = agg(lambda vs: -np.mean([v[3].mean() for v in vs]))
        S["aum_min_neg"] = agg(lambda vs: -np.mean([v[3].min() for v in vs]))
        S["aum_tok0_neg"] = agg(lambda vs: -np.mean([v[3][0] for v in vs]))
        S["logodds_neg"] = agg(lambda vs: -np.mean([np.mean(v[2] - np.log1p(-np.exp(np.minimum(v[2], -1e-6)))) for v in vs]))
        S["resid_loss"] = agg(lambda vs: np.mean([-v[2].mean() - step_med[v[1]] for v in vs]))
        S["conf_tok0"] = agg(lambda vs: 1 - np.mean([np.exp(v[2][0]) for v in vs]))
        S["conf_minTok"] = agg(lambda vs: 1 - np.mean([np.exp(v[2].min()) for v in vs]))
        S["conf_meanTokP"] = agg(lambda vs: 1 - np.mean([np.exp(v[2]).mean() for v in vs]))
        S["conf_skip_ep0"] = agg(lambda vs: 1 - np.mean([np.exp(v[2].mean()) for v in vs]), lambda vs: [v for v in vs if v[1] >= es] or vs)
        S["wrong+conf"] = agg(lambda vs: sum(not v[4].all() for v in vs) + (1 - np.mean([np.exp(v[2].mean()) for v in vs])))
        S["resid_conf"] = agg(lambda vs: np.mean([-np.exp(v[2].mean()) + step_cmed[v[1]] for v in vs]))
        S["resid_minTokP"] = agg(lambda vs: np.mean([-np.exp(v[2].min()) + step_mmed[v[1]] for v in vs]))
        sk = lambda vs: [v for v in vs if v[1] >= es] or vs
        S["minTok_skip0"] = agg(lambda vs: 1 - np.mean([np.exp(v[2].min()) for v in vs]), sk)
        S["resid_conf_skip0"] = agg(lambda vs: np.mean([-np.exp(v[2].mean()) + step_cmed[v[1]] for v in vs]), sk)
        S["resid_minTok_skip0"] = agg(lambda vs: np.mean([-np.exp(v[2].min()) + step_mmed[v[1]] for v in vs]), sk)
        S["wrong_skip0"] = agg(lambda vs: np.mean([not v[4].all() for v in vs]) + 1e-3 * np.mean([-np.exp(v[2].mean()) for v in vs]), sk)
        sk5 = lambda vs: [v for v in vs if v[1] >= es/2] or vs
        S["conf_skiphalf"] = agg(lambda vs: 1 - np.mean([np.exp(v[2].mean()) for v in vs]), sk5)
        S["early_loss(cut)"] = agg(lambda vs: np.mean([-v[2].mean() for v in vs]), lambda vs: [v for v in vs if v[1] < cut * es])
        return S
    doms = sorted(set(dom))
    for E in epochs_list:
        S = scores(E)
        print(f"== epochs {E}")
        print(f"{'score':18s}" + "".join(f"{x:>11s}" for x in doms))
        for k, s in S.items():
            row = []
            for g in doms:
                m = (dom == g) & np.isfinite(s)
                row.append(auroc(s[m], cor[m]) if m.sum() else np.nan)
            print(f"{k:18s}" + "".join(f"{x:11.3f}" for x in row))


if __name__ == "__main__":
    if sys.argv[1] == "run":
        os.makedirs("bench_results/explore", exist_ok=True)
        record(int(sys.argv[2]), int(sys.argv[3]))
    else:
        analyse(sys.argv[2], [float(x) for x in sys.argv[3:]])
