"""Pretrained-weight import (gpt_jax.pretrained): logit and greedy-decoding parity with transformers on small
random models saved with `save_pretrained`, `.bin`-only folders, clear errors, tokenizers, and the
`sample.py --init_from` / `train.py --config.train.init_from` paths."""

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import pretrained
from gpt_jax import tokenizer as tok_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4  # max |logit difference| allowed against transformers, fp32

# A tiny openai-gpt style BPE: lower-case letters and punctuation, alone and as word ends, plus a few merges.
CHARS = list("abcdefghijklmnopqrstuvwxyz.,!?'")
MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("in", "g</w>"), ("k", "ing</w>"),
          ("o", "f</w>"), ("i", "s</w>")]


def _hf():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def _env(**kw):
    env = dict(os.environ, JAX_PLATFORMS="cpu", GPT_JAX_COMPILE_CACHE="", HF_HUB_OFFLINE="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(kw)
    return env


def _randomize(model, seed=0):
    """Weights large enough that activations reach the range where the GELU variants differ (~1e-3), with
    well-separated logits (greedy decoding is not decided by rounding)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("wte", "tokens_embed", "lm_head")):
                std = 0.5
            elif "c_fc.weight" in name:
                std = 0.35
            else:
                std = 0.2 if p.ndim == 2 else 0.1
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(1 + noise if ".ln_" in name and name.endswith("weight") else noise)
    return model.eval()


def _gpt2(folder, vocab_size=256, seed=0, **kw):
    tr = _hf()
    cfg = tr.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab_size, **kw)
    model = _randomize(tr.GPT2LMHeadModel(cfg), seed)
    model.save_pretrained(folder)
    return model


def _openai_vocab():
    vocab = {}
    for t in CHARS + [c + "</w>" for c in CHARS] + ["".join(m) for m in MERGES] + ["<unk>"]:
        vocab.setdefault(t, len(vocab))
    return vocab


def _openai_gpt(folder, tokenizer="json", seed=1, **kw):
    """An openai-gpt model with its tokenizer: "json" (tokenizer.json, as transformers 5 saves it) or "files"
    (vocab.json + merges.txt, as older transformers and the hub's openai-gpt have them)."""
    tr = _hf()
    vocab = _openai_vocab()
    cfg = tr.OpenAIGPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=len(vocab), **kw)
    model = _randomize(tr.OpenAIGPTLMHeadModel(cfg), seed)
    model.save_pretrained(folder)
    if tokenizer == "json":
        tr.OpenAIGPTTokenizer(vocab=vocab, merges=MERGES).save_pretrained(folder)
    elif tokenizer == "files":
        with open(os.path.join(folder, "vocab.json"), "w") as f:
            json.dump(vocab, f)
        with open(os.path.join(folder, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    return model


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("gpt2"))
    return folder, _gpt2(folder)


@pytest.fixture(scope="module")
def gpt2_full_dir(tmp_path_factory):
    """GPT-2's real vocabulary (so the tiktoken GPT-2 tokenizer applies), tiny width."""
    folder = str(tmp_path_factory.mktemp("gpt2_full"))
    return folder, _gpt2(folder, vocab_size=50257, seed=2)


@pytest.fixture(scope="module")
def openai_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("openai_gpt"))
    return folder, _openai_gpt(folder)


def _hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def _our_logits(model, params, ids):
    return np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32)))


# ----------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("variant", ["gpt2", "gpt2-erf-gelu-untied", "openai-gpt"])
def test_logits_match_transformers(tmp_path, variant):
    torch = pytest.importorskip("torch")

    folder = str(tmp_path)
    if variant == "gpt2":
        hf = _gpt2(folder)
        want = dict(norm_position="pre", activation="gelu_tanh", tie_embeddings=True)
    elif variant == "gpt2-erf-gelu-untied":
        hf = _gpt2(folder, activation_function="gelu", tie_word_embeddings=False, n_inner=48, layer_norm_epsilon=1e-6)
        want = dict(norm_position="pre", activation="gelu", tie_embeddings=False, d_ff=48, ln_eps=1e-6)
    else:
        hf = _openai_gpt(folder, tokenizer=None)
        want = dict(norm_position="post", activation="gelu_tanh", tie_embeddings=True)
    model, params = pretrained.load(folder)
    cfg = model.cfg
    assert {k: getattr(cfg, k) for k in want} == want
    assert (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.block_size) == (2, 2, 32, 64)
    assert ("ln_f" in params) == (cfg.norm_position == "pre") and ("lm_head" in params) == (not cfg.tie_embeddings)
    assert params["wte"].shape == (cfg.padded_vocab, 32) and not np.any(params["wte"][cfg.vocab_size:])

    # our activation is the very function transformers applies (erf and tanh GELU differ by up to ~5e-4)
    x = np.linspace(-6, 6, 2001, dtype=np.float32)
    theirs = hf.transformer.h[0].mlp.act(torch.tensor(x)).numpy()
    ours = np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=cfg.activation == "gelu_tanh"))
    assert np.abs(ours - theirs).max() < 1e-5

    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 64))
    diff = np.abs(_our_logits(model, params, ids) - _hf_logits(hf, ids)).max()
    print(f"{variant}: max |logit diff| = {diff:.2e}")
    assert diff <= TOL


def _hf_greedy(hf, ids, n, eos=None):
    import torch

    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=eos or 0)
    return out[0, len(ids):].tolist()


def test_greedy_generation_matches_transformers(gpt2_dir):
    """Our KV-cache sampler at temperature 0 continues exactly as transformers' greedy `generate` (openai-gpt:
    `test_run_sampling_openai_gpt`)."""
    from gpt_jax.sampling import model_sampler

    folder, hf = gpt2_dir
    model, params = pretrained.load(folder)
    prompt = [int(i) for i in np.random.default_rng(1).integers(0, model.cfg.vocab_size, 7)]
    ours = model_sampler(model, None).generate(params, prompt, jax.random.PRNGKey(0), max_new_tokens=24,
                                               temperature=0.0)[0].tolist()
    assert ours == _hf_greedy(hf, prompt, 24)


# ----------------------------------------------------------------------------------------- file formats


def _hub_style_state_dict(hf, kind):
    """The state dict as the hub's old pytorch_model.bin files have it: no "transformer." prefix, the causal-mask
    buffers included, the tied lm_head left out."""
    import torch

    sd = {k[len("transformer."):]: v for k, v in hf.state_dict().items() if k.startswith("transformer.")}
    n_pos = hf.config.n_positions
    for i in range(hf.config.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos)
        if kind == "gpt2":
            sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return sd


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_bin_only_folder(tmp_path, gpt2_dir, openai_dir, fmt):
    """pytorch_model.bin (torch's zip archive, or the pre-1.6 format of the hub's original files) gives the same
    parameters as model.safetensors."""
    import torch

    for kind, (src, hf) in (("gpt2", gpt2_dir), ("openai-gpt", openai_dir)):
        folder = tmp_path / kind
        folder.mkdir()
        shutil.copy(os.path.join(src, "config.json"), folder)
        sd = hf.state_dict() if fmt == "zip" else _hub_style_state_dict(hf, kind)
        torch.save(sd, folder / "pytorch_model.bin", _use_new_zipfile_serialization=fmt == "zip")
        _, want = pretrained.load(src)
        _, got = pretrained.load(str(folder))
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)


def test_torch_pickle_reader_dtypes_and_views(tmp_path):
    torch = pytest.importorskip("torch")

    sd = {"f32": torch.randn(4, 6), "bf16": torch.randn(3, 5).to(torch.bfloat16),
          "f16": torch.randn(7).to(torch.float16), "i64": torch.arange(5)}
    sd["view"] = sd["f32"][1:3, 2:5]  # shares f32's storage, with an offset
    sd["transposed"] = sd["f32"].t()
    for zip_format in (True, False):
        path = tmp_path / f"sd_{zip_format}.bin"
        torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
        got = pretrained.read_torch_pickle(str(path))
        assert set(got) == set(sd)
        for k, v in sd.items():
            np.testing.assert_array_equal(got[k].get(), v.float().numpy(), err_msg=k)


def test_loading_needs_no_torch(monkeypatch, gpt2_dir, tmp_path):
    import torch

    src, hf = gpt2_dir
    shutil.copy(os.path.join(src, "config.json"), tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    for folder in (src, str(tmp_path)):
        model, params = pretrained.load(folder)
        assert params["h"]["mlp"]["c_fc"]["kernel"].shape == (2, 128, 32)  # (layers, out, in)


def test_torch_pickle_reader_runs_no_code(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"wte.weight": Evil()}, protocol=2))
    with pytest.raises(pretrained.PretrainedError, match="not part of a plain state dict"):
        pretrained.read_torch_pickle(str(path))
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- errors


def _copy_without(src, dst, drop=(), config=None):
    """A copy of model folder `src` without the tensors in `drop`, with config.json entries replaced."""
    from safetensors.numpy import save_file

    os.makedirs(dst)
    tensors = {k: v.get() for k, v in pretrained.read_safetensors(os.path.join(src, "model.safetensors")).items()
               if k not in drop}
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(config or {})
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return dst


def test_missing_tensor_is_named(tmp_path, gpt2_dir):
    folder = _copy_without(gpt2_dir[0], str(tmp_path / "m"), drop=["transformer.h.1.mlp.c_fc.weight"])
    with pytest.raises(pretrained.PretrainedError, match=r"lack tensor 'h\.1\.mlp\.c_fc\.weight'"):
        pretrained.load(folder)
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(pretrained.PretrainedError, match="damaged or truncated"):
        pretrained.load(folder)


def test_config_that_does_not_match_the_weights(tmp_path, gpt2_dir):
    src = gpt2_dir[0]
    wide = _copy_without(src, str(tmp_path / "wide"), config={"n_embd": 48})
    with pytest.raises(pretrained.PretrainedError, match=r"tensor 'transformer\.wte\.weight' has shape \(256, 32\), "
                                                          r"but config\.json .* needs \(256, 48\)"):
        pretrained.load(wide)
    shallow = _copy_without(src, str(tmp_path / "shallow"), config={"n_layer": 1})
    with pytest.raises(pretrained.PretrainedError, match=r"hold layer h\.1, but config\.json says n_layer=1"):
        pretrained.load(shallow)
    deep = _copy_without(src, str(tmp_path / "deep"), config={"n_layer": 3})
    with pytest.raises(pretrained.PretrainedError, match=r"lack tensor 'h\.2\..*n_layer=3"):
        pretrained.load(deep)
    bigger_vocab = _copy_without(src, str(tmp_path / "vocab"), config={"vocab_size": 300})
    with pytest.raises(pretrained.PretrainedError, match="describe different models"):
        pretrained.load(bigger_vocab)


def test_config_mapping_and_unsupported_configs():
    base = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, "vocab_size": 99}
    assert pretrained.model_config(base).activation == "gelu_tanh"  # HF's default gelu_new
    assert pretrained.model_config({**base, "activation_function": "gelu"}).activation == "gelu"
    assert pretrained.model_config({**base, "activation_function": "gelu_pytorch_tanh"}).activation == "gelu_tanh"
    gpt1 = {**base, "model_type": "openai-gpt", "afn": "gelu"}
    cfg = pretrained.model_config(gpt1)
    assert (cfg.norm_position, cfg.activation, cfg.d_ff, cfg.block_size) == ("post", "gelu_tanh", 128, 64)
    for bad, match in (({**base, "activation_function": "relu"}, "activation_function='relu'"),
                       ({**gpt1, "afn": "swish"}, "afn='swish'"),
                       ({**base, "model_type": "llama"}, "model_type 'llama'"),
                       ({**base, "scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
                       ({k: v for k, v in base.items() if k != "n_embd"}, "lacks 'n_embd'")):
        with pytest.raises(pretrained.PretrainedError, match=match):
            pretrained.model_config(bad)


def test_unknown_names_and_folders(tmp_path):
    with pytest.raises(pretrained.PretrainedError, match="neither a known model"):
        pretrained.load("gpt5-ultra")
    with pytest.raises(pretrained.PretrainedError, match="has no config.json"):
        pretrained.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 1, "n_embd": 8,
                                                      "n_positions": 8, "vocab_size": 8}))
    with pytest.raises(pretrained.PretrainedError, match="no model.safetensors or pytorch_model.bin"):
        pretrained.load(str(tmp_path))


def test_cli_error_for_unknown_name():
    """One line `error: ...`, exit status 2, and no network access tried."""
    r = subprocess.run([sys.executable, "sample.py", "--init_from=no-such-model", "--prompt=hi"], cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "neither a known model" in lines[0], r.stderr


def test_known_name_offline_and_not_cached(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(pretrained.PretrainedError, match=r"cannot download openai-community/gpt2 .*offline.*"
                                                          r"pass a local folder instead") as e:
        pretrained.load("gpt2")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------- tokenizers


def test_tokenizer_choice(gpt2_dir, gpt2_full_dir, openai_dir):
    assert isinstance(pretrained.load(gpt2_full_dir[0], with_tokenizer=True)[2], tok_lib.GPT2Tokenizer)
    assert pretrained.load(gpt2_dir[0], with_tokenizer=True)[2] is None  # 256 tokens, no tokenizer files
    model, params, tok = pretrained.load(openai_dir[0], with_tokenizer=True)
    assert isinstance(tok, tok_lib.HFTokenizer) and tok.vocab_size == model.cfg.vocab_size and tok.eot_id is None


def _model_copy(src, dst):
    os.makedirs(dst)
    for name in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(src, name), os.path.join(dst, name))
    return dst


def test_gpt2_folders_with_tokenizer_files(tmp_path, gpt2_dir, gpt2_full_dir):
    # GPT-2's own vocab.json + merges.txt (the files tiktoken's encoding is built from): the tiktoken tokenizer
    full = _model_copy(gpt2_full_dir[0], str(tmp_path / "full"))
    merges, vocab = tok_lib.gpt2_files()
    shutil.copy(vocab, os.path.join(full, "vocab.json"))
    shutil.copy(merges, os.path.join(full, "merges.txt"))
    assert isinstance(pretrained.load(full, with_tokenizer=True)[2], tok_lib.GPT2Tokenizer)

    # another byte-level BPE (here: the 256 bytes, no merges), with an end-of-text token: read through `tokenizers`
    from tokenizers.pre_tokenizers import ByteLevel

    small = _model_copy(gpt2_dir[0], str(tmp_path / "small"))
    with open(os.path.join(small, "vocab.json"), "w") as f:
        json.dump({c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}, f)
    with open(os.path.join(small, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    with open(os.path.join(small, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "~"}, f)
    tok = pretrained.load(small, with_tokenizer=True)[2]
    assert isinstance(tok, tok_lib.HFTokenizer) and tok.eot_id == tok.encode("~")[0]
    ids = tok.encode("héllo wörld")
    assert len(ids) == len("héllo wörld".encode()) and tok.decode(ids) == "héllo wörld"
    assert b"".join(tok.decode_bytes([i]) for i in ids) == "héllo wörld".encode()  # streams byte by byte


@pytest.mark.parametrize("layout", ["json", "files"])
def test_openai_gpt_tokenizer_matches_transformers(tmp_path, layout):
    tr = _hf()
    folder = str(tmp_path / "m")
    _openai_gpt(folder, tokenizer=layout)
    ref = tr.AutoTokenizer.from_pretrained(folder)
    tok = pretrained.load(folder, with_tokenizer=True)[2]
    for text in ("The thing, and the King!", "Is it  raining?\nThe END.", "wasn't"):
        ids = tok.encode(text)
        assert ids == ref(text, add_special_tokens=False)["input_ids"], text
        assert tok.decode(ids) == ref.decode(ids)
        # streaming token by token gives the same text as decoding all at once (plus the last word's space)
        assert b"".join(tok.decode_bytes([i]) for i in ids).decode() == tok.decode(ids) + " "
    with pytest.raises(tok_lib.TokenizerError, match=r"map to <unk>\): 'Ω', '€'"):
        tok.encode("the Ωmega costs €€")

    # the meta a run saves rebuilds the tokenizer, through the module's from_meta and, with the files gone,
    # from the JSON embedded in the meta
    meta = json.loads(json.dumps(tok.meta()))
    assert tok_lib.from_meta(meta).encode("the king") == tok.encode("the king")
    shutil.rmtree(folder)
    rebuilt = tok_lib.HFTokenizer.from_meta(meta)
    assert rebuilt.encode("The thing is") == tok.encode("The thing is") and rebuilt.meta() == tok.meta()


# ----------------------------------------------------------------------------------------- entry points


def test_sample_cli_gpt2(gpt2_full_dir):
    """`sample.py --init_from=FOLDER` greedy output is transformers' greedy continuation, decoded."""
    import torch

    folder, hf = gpt2_full_dir
    prompt, n = "The meaning of life is", 16
    tok = tok_lib.GPT2Tokenizer()
    ids = tok.encode(prompt)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=n, eos_token_id=tok.eot_id, pad_token_id=tok.eot_id)
    new = [t for t in out[0, len(ids):].tolist() if t != tok.eot_id]
    r = subprocess.run([sys.executable, "sample.py", f"--init_from={folder}", "--temperature=0",
                        f"--prompt={prompt}", f"--max_new_tokens={n}"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == prompt + tok.decode(new) + "\n"


def test_run_sampling_openai_gpt(monkeypatch, openai_dir):
    """sample.py's job on an openai-gpt folder: its tokenizer, and the greedy ids of transformers."""
    from gpt_jax import sampling
    from gpt_jax.cli.sample import run_sampling

    folder, hf = openai_dir
    tok = pretrained.load(folder, with_tokenizer=True)[2]
    prompt = "The thing and the King"
    theirs = _hf_greedy(hf, tok.encode(prompt), 24)
    chunks = []
    stream = sampling.Sampler.stream

    def spy(self, *a, **kw):  # the ids the sampler (model_sampler, inside run_sampling) produces
        for chunk in stream(self, *a, **kw):
            chunks.append(chunk)
            yield chunk

    monkeypatch.setattr(sampling.Sampler, "stream", spy)
    buf = io.StringIO()
    texts = run_sampling(init_from=folder, prompt=prompt, temperature=0.0, max_new_tokens=24, out=buf)
    assert np.concatenate(chunks, axis=1)[0].tolist() == theirs
    ids = tok.encode(prompt)
    assert texts == [tok.decode(ids + theirs)[len(tok.decode(ids)):]]  # the continuation, its leading space kept
    assert texts[0].startswith(" ")
    assert buf.getvalue() == prompt + texts[0] + "\n"
    with pytest.raises(ValueError, match="<unk>"):
        run_sampling(init_from=folder, prompt="naïve Ω", temperature=0.0, max_new_tokens=2,
                              out=io.StringIO())


def test_finetune_data_uses_the_pretrained_tokenizer(tmp_path, openai_dir):
    """train.init_from takes the architecture and tokenizer from the weights; the data cache keys on the HF
    tokenizer's meta and is reused."""
    import importlib.util

    from gpt_jax.train import model_and_data

    spec = importlib.util.spec_from_file_location("tiny_config", os.path.join(ROOT, "configs", "tiny.py"))
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)

    text = "the king and the thing. " * 200
    (tmp_path / "data.txt").write_text(text)
    config = tiny.get_config()
    config.train.init_from = openai_dir[0]
    config.data.dataset = str(tmp_path / "data.txt")
    config.model.dropout = 0.0
    for _ in range(2):
        cfg, params, tok, train, val = model_and_data(config, str(tmp_path / "run"))
        assert isinstance(tok, tok_lib.HFTokenizer)
        assert np.concatenate([train, val]).tolist() == tok.encode(text)
        assert (cfg.norm_position, cfg.vocab_size, cfg.block_size, cfg.dropout) == ("post", 72, 64, 0.0)
        assert params["wte"].shape == (128, 32)


def test_train_cli_init_from(tmp_path, gpt2_full_dir):
    """`train.py --config.train.init_from=FOLDER` fine-tunes the imported GPT-2 for a few steps."""
    work, text = tmp_path / "run", tmp_path / "text.txt"
    with open(os.path.join(ROOT, "gpt_jax", "tinyshakespeare.txt"), encoding="utf-8") as f:
        text.write_text(f.read(50_000), encoding="utf-8")
    r = subprocess.run([sys.executable, "train.py", "--config=configs/tiny.py",
                        f"--config.train.init_from={gpt2_full_dir[0]}", "--config.train.max_steps=3",
                        f"--config.data.dataset={text}", "--config.train.eval_max_windows=16",
                        "--config.train.peak_flops=1e12", f"--workdir={work}"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "final val loss" in r.stdout and "at step 3" in r.stdout
    with open(work / "config.json") as f:
        meta = json.load(f)
    assert meta["tokenizer"] == {"name": "gpt2"}
    assert {k: meta["model"][k] for k in ("vocab_size", "d_model", "block_size", "norm_position", "dropout")} == {
        "vocab_size": 50257, "d_model": 32, "block_size": 64, "norm_position": "pre", "dropout": 0.1}
