# Diagnostic for NOTES section 12 (not product code): peak memory of one LoRA fwd+bwd step of
# Mistral-7B's block shape, 4-bit vs bf16 base, with and without mlx-lm's grad_checkpoint, batch 1 and 4.
# python benchmarks/ckpt_peak_diag.py 8   (8 blocks, on the GPU);  python benchmarks/ckpt_peak_diag.py 2 small  (CPU check)
# The no-checkpointing rows run first: mlx-lm's grad_checkpoint patches the block class for the rest of the process.
import json, sys
import mlx.core as mx, mlx.nn as nn
from mlx_lm.models.llama import Model, ModelArgs
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.tuner.trainer import grad_checkpoint
from mlx_lm.utils import quantize_model
from mlx.utils import tree_flatten
L = int(sys.argv[1]) if len(sys.argv) > 1 else 8
small = len(sys.argv) > 2
base = dict(model_type="mistral", hidden_size=4096, num_hidden_layers=L, intermediate_size=14336, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5, vocab_size=32768, rope_theta=1e6, tie_word_embeddings=False)
if small:
    base.update(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, head_dim=32, vocab_size=1000)
W = 320 if not small else 64
rows = []
for ckpt in (False, True):
    for q in (False, True):
        mx.random.seed(0)
        m = Model(ModelArgs.from_dict(base)); m.set_dtype(mx.bfloat16)
        if q: m, _ = quantize_model(m, dict(base), 64, 4)
        m.freeze()
        linear_to_lora_layers(m, L, {"rank": 16, "scale": 20.0, "dropout": 0.0,
                              "keys": ["self_attn.q_proj","self_attn.k_proj","self_attn.v_proj","self_attn.o_proj","mlp.gate_proj","mlp.up_proj","mlp.down_proj"]})
        mx.eval(m.parameters())
        if ckpt: grad_checkpoint(m.layers[0])
        wgb = sum(v.nbytes for _, v in tree_flatten(m.parameters())) / 1e9
        def loss(model, x, y):
            return nn.losses.cross_entropy(model(x).astype(mx.float32), y).mean()
        vg = nn.value_and_grad(m, loss)
        for B in (1, 4):
            x = mx.random.randint(0, base["vocab_size"], (B, W)); y = mx.random.randint(0, base["vocab_size"], (B, W))
            mx.eval(vg(m, x, y))  # warm
            mx.clear_cache(); mx.reset_peak_memory(); a0 = mx.get_active_memory()
            l, g = vg(m, x, y); mx.eval(l, g)
            pk = mx.get_peak_memory()
            r = dict(layers=L, ckpt=ckpt, q4=q, batch=B, width=W, weights_gb=round(wgb, 3), active_before_gb=round(a0/1e9, 3),
                     peak_gb=round(pk/1e9, 3), above_weights_gb=round((pk - a0)/1e9, 3))
            print(json.dumps(r), flush=True); rows.append(r)
        del m, vg; mx.clear_cache()
print("| ckpt | 4-bit | batch | weights GB | peak GB | above start GB |")
for r in rows:
    print(f"| {r['ckpt']} | {r['q4']} | {r['batch']} | {r['weights_gb']} | {r['peak_gb']} | {r['above_weights_gb']} |")
