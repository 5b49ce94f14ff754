//! Cross-checks of the model room on tiny random models: formats agree, the block-by-block
//! path equals `Model::forward`, an independent naive forward agrees, bad files are errors.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, D};

use super::testutil::{max_abs_diff, token_windows, write_gguf, write_hf};
use super::*;
use crate::layer::LayerKind;

fn tiny(arch: Arch) -> Model {
    Model::random(&ModelConfig::tiny(arch), 7, &Device::Cpu).unwrap()
}

fn ids(model: &Model, batch: usize, seq: usize) -> Tensor {
    let w = token_windows(batch, seq, model.config.vocab_size, 11);
    let refs: Vec<&[u32]> = w.iter().map(Vec::as_slice).collect();
    model.ids_tensor(&refs).unwrap()
}

/// An independent forward: per-head loops, `repeat_kv`-style head mapping, candle's slow
/// reference RoPE and a plain-ops RMSNorm. With `bf16`, every linear layer's input and weight
/// are first rounded to bf16 (candle's conversion, round to nearest even).
fn naive_forward(m: &Model, ids: &Tensor, bf16: bool) -> Tensor {
    let cfg = &m.config;
    let (b, t) = ids.dims2().unwrap();
    // Gemma 3: the local layers' own RoPE base and window.
    let tables = |theta: f64| {
        let (cos, sin) = rope_tables(cfg.head_dim, theta, t);
        (
            Tensor::from_vec(cos, (t, cfg.head_dim / 2), &Device::Cpu).unwrap(),
            Tensor::from_vec(sin, (t, cfg.head_dim / 2), &Device::Cpu).unwrap(),
        )
    };
    let global = tables(cfg.rope_theta);
    let local = cfg.gemma.map(|g| tables(g.rope_local_theta));
    let mask_of = |window: usize| {
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                let (row, col) = (i / t, i % t);
                if col > row || row - col >= window {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(mask, (t, t), &Device::Cpu).unwrap()
    };
    let gemma = cfg.gemma.is_some();
    let norm = |x: &Tensor, n: &RmsNorm| {
        let w = if gemma {
            (n.weight() + 1.0).unwrap()
        } else {
            n.weight().clone()
        };
        layers::rms_norm_reference(x, &w, cfg.rms_norm_eps).unwrap()
    };
    let round = |t: &Tensor| {
        if bf16 {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        } else {
            t.clone()
        }
    };
    let lin = |x: &Tensor, l: &Linear| {
        let y = round(x)
            .broadcast_matmul(&round(l.weight()).t().unwrap())
            .unwrap();
        match l.bias() {
            Some(bias) => y.broadcast_add(bias).unwrap(),
            None => y,
        }
    };
    let split = |y: Tensor, n: usize| {
        y.reshape((b, t, n, cfg.head_dim))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let mut x = m
        .embed_tokens
        .index_select(&ids.flatten_all().unwrap(), 0)
        .unwrap()
        .reshape((b, t, cfg.hidden_size))
        .unwrap();
    if gemma {
        x = (x * f64::from((cfg.hidden_size as f32).sqrt())).unwrap();
    }
    for (i, blk) in m.blocks.iter().enumerate() {
        let is_local = cfg.is_local_layer(i);
        let (cos, sin) = match (&local, is_local) {
            (Some(l), true) => l,
            _ => &global,
        };
        let mask = mask_of(match is_local {
            true => cfg.sliding_window.unwrap(),
            false => usize::MAX,
        });
        let xn = norm(&x, &blk.input_layernorm);
        let (mut q, mut k) = (
            split(lin(&xn, &blk.q_proj), cfg.num_heads),
            split(lin(&xn, &blk.k_proj), cfg.num_kv_heads),
        );
        if let Some(g) = &blk.gemma {
            q = norm(&q, &g.q_norm);
            k = norm(&k, &g.k_norm);
        }
        let q = candle_nn::rotary_emb::rope_slow(&q, cos, sin).unwrap();
        let k = candle_nn::rotary_emb::rope_slow(&k, cos, sin).unwrap();
        let v = split(lin(&xn, &blk.v_proj), cfg.num_kv_heads);
        let group = cfg.num_heads / cfg.num_kv_heads;
        let heads: Vec<Tensor> = (0..cfg.num_heads)
            .map(|h| {
                let qh = q.narrow(1, h, 1).unwrap();
                let kh = k.narrow(1, h / group, 1).unwrap();
                let vh = v.narrow(1, h / group, 1).unwrap();
                let scale = cfg
                    .gemma
                    .map_or(cfg.head_dim as f64, |g| g.query_pre_attn_scalar);
                let s = (qh.matmul(&kh.t().unwrap()).unwrap() / scale.sqrt()).unwrap();
                let p =
                    candle_nn::ops::softmax(&s.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
                p.matmul(&vh).unwrap()
            })
            .collect();
        let attn = Tensor::cat(&heads, 1)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, cfg.num_heads * cfg.head_dim))
            .unwrap();
        let o = lin(&attn, &blk.o_proj);
        x = match &blk.gemma {
            Some(g) => (x + norm(&o, &g.post_attention_norm)).unwrap(),
            None => (x + o).unwrap(),
        };
        let hn = norm(&x, &blk.post_attention_layernorm);
        let gate = lin(&hn, &blk.gate_proj);
        let gate = match gemma {
            // gelu_pytorch_tanh written out.
            true => gate
                .affine(1.0, 0.0)
                .unwrap()
                .apply(&|g: &Tensor| -> candle_core::Result<Tensor> {
                    let inner =
                        ((g + (g.powf(3.0)? * 0.044715)?)? * (2.0 / std::f64::consts::PI).sqrt())?;
                    (g * 0.5)? * (inner.tanh()? + 1.0)?
                })
                .unwrap(),
            false => gate.silu().unwrap(),
        };
        let act = (gate * lin(&hn, &blk.up_proj)).unwrap();
        let down = lin(&act, &blk.down_proj);
        x = match &blk.gemma {
            Some(g) => (x + norm(&down, &g.post_feedforward_norm)).unwrap(),
            None => (x + down).unwrap(),
        };
    }
    lin(&norm(&x, &m.norm), &m.lm_head)
}

#[test]
fn forward_matches_naive_reference() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Gemma3] {
        let mut m = tiny(arch);
        if let Some(g) = m.config.gemma.as_mut() {
            // A query scalar unlike the head width (16): the scale must come from it.
            g.query_pre_attn_scalar = 24.0;
            let scale = m.config.attn_scale();
            for b in &mut m.blocks {
                b.attn.scale = scale;
            }
        }
        // 100 tokens: several blocks of query rows in the fused CPU attention (and, for
        // Gemma 3, far beyond the local layers' window of 8).
        for seq in [9, 100] {
            let ids = ids(&m, 2, seq);
            let got = m.forward(&ids).unwrap();
            assert_eq!(got.dims(), &[2, seq, 256]);
            let want = naive_forward(&m, &ids, false);
            let d = max_abs_diff(&got, &want);
            assert!(d < 1e-4, "{arch:?} seq {seq}: max |Δ| = {d}");
        }
    }
}

/// On a CPU without AVX512-BF16 (e.g. an AMD EPYC Zen 3), bf16 is refused with the documented
/// error instead of running a kernel the CPU lacks.
#[test]
#[cfg_attr(
    autoprune_cpu_avx512_bf16,
    ignore = "needs a CPU *without* AVX512-BF16 (checks the refusal)"
)]
fn bf16_precision_is_refused_without_avx512_bf16() {
    assert!(!bf16::available(), "rebuild the tests on this machine");
    let mut m = tiny(Arch::Llama);
    let err = m.set_precision(Precision::Bf16).unwrap_err().to_string();
    assert!(err.contains("needs a CPU with AVX512-BF16"), "{err}");
    assert_eq!(m.precision(), Precision::F32);
}

#[test]
#[cfg_attr(
    not(autoprune_cpu_avx512_bf16),
    ignore = "needs AVX512-BF16 (vdpbf16ps)"
)]
fn bf16_precision_rounds_the_linear_operands_only() {
    crate::testutil::require_cpu(&["avx512f", "avx512bw", "avx512bf16"]);
    for arch in [Arch::Llama, Arch::Qwen2] {
        let mut m = tiny(arch);
        let ids = ids(&m, 2, 100);
        let f32_logits = m.forward(&ids).unwrap();
        m.set_precision(Precision::Bf16).unwrap();
        assert_eq!(m.precision(), Precision::Bf16);
        // The setting survives pruning's weight replacement and cloning.
        let w = m.blocks[0].q_proj.weight().clone();
        m.blocks[0].set_weight(LayerKind::Q, w).unwrap();
        let m = m.clone();
        assert!(m
            .blocks
            .iter()
            .all(|b| b.linears().all(|(_, l)| l.precision() == Precision::Bf16)));
        let got = m.forward(&ids).unwrap();
        // Against a naive forward with bf16-rounded linear operands only f32 accumulation
        // order differs, but through the layers that flips operand roundings (each a 2⁻⁸
        // step), which flips more: so the logits are much closer to the naive bf16 forward
        // than to f32, not equal. The kernel itself is checked exactly in `bf16::tests`.
        let rms = |a: &Tensor, b: &Tensor| {
            let d = (a - b).unwrap().sqr().unwrap().mean_all().unwrap();
            d.to_scalar::<f32>().unwrap().sqrt()
        };
        let to_naive = rms(&got, &naive_forward(&m, &ids, true));
        let to_f32 = rms(&got, &f32_logits);
        let scale = rms(&f32_logits, &f32_logits.zeros_like().unwrap());
        assert!(
            to_f32 > 1e-3 * scale,
            "{arch:?}: bf16 equals f32 ({to_f32})"
        );
        assert!(
            to_f32 < 0.02 * scale,
            "{arch:?}: bf16 far from f32 ({to_f32} of {scale})"
        );
        assert!(to_naive < 0.35 * to_f32, "{arch:?}: {to_naive} vs {to_f32}");
        // One layer alone is the rounded product up to accumulation order.
        let l = &m.blocks[0].q_proj;
        let x = m.embed(&ids).unwrap();
        let r = |t: &Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let mut want = r(&x).broadcast_matmul(&r(l.weight()).t().unwrap()).unwrap();
        if let Some(b) = l.bias() {
            want = want.broadcast_add(b).unwrap();
        }
        assert!(
            max_abs_diff(&l.forward(&x).unwrap(), &want) < 1e-5,
            "{arch:?}"
        );
    }
}

#[test]
fn block_by_block_equals_forward_and_captures_inputs() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let m = tiny(arch);
        let ids = ids(&m, 2, 7);
        let rope = m.rope(7).unwrap();
        let mut x = m.embed(&ids).unwrap();
        for blk in &m.blocks {
            let mut seen: Vec<(LayerKind, Tensor)> = Vec::new();
            let out = blk.forward(&x, &rope, &mut |k, t| {
                seen.push((k, t.clone()));
                Ok(())
            });
            let mut stats_only: Vec<(LayerKind, Tensor)> = Vec::new();
            blk.collect_inputs(&x, &rope, &mut |k, t| {
                stats_only.push((k, t.clone()));
                Ok(())
            })
            .unwrap();
            let kinds: Vec<LayerKind> = seen.iter().map(|(k, _)| *k).collect();
            assert_eq!(kinds, LayerKind::BLOCK.to_vec());
            for ((kind, t), (kind2, t2)) in seen.iter().zip(&stats_only) {
                let (_, cols) = blk.linear(*kind).unwrap().shape();
                assert_eq!(t.dims(), &[2, 7, cols], "{kind:?}");
                assert!(t.is_contiguous());
                assert_eq!(kind, kind2);
                assert_eq!(max_abs_diff(t, t2), 0.0);
            }
            x = out.unwrap();
        }
        let staged = m.logits(&x).unwrap();
        assert_eq!(
            max_abs_diff(&staged, &m.forward(&ids).unwrap()),
            0.0,
            "{arch:?}"
        );
    }
}

#[test]
fn capture_errors_propagate() {
    let m = tiny(Arch::Llama);
    let ids = ids(&m, 1, 4);
    let rope = m.rope(4).unwrap();
    let x = m.embed(&ids).unwrap();
    let r = m.blocks[0].forward(&x, &rope, &mut |k, _| {
        if k == LayerKind::O {
            Err(ModelError::Input("stop".into()))
        } else {
            Ok(())
        }
    });
    assert!(matches!(r, Err(ModelError::Input(ref s)) if s == "stop"));
}

#[test]
fn set_weight_changes_the_output() {
    let mut m = tiny(Arch::Llama);
    let ids = ids(&m, 1, 5);
    let before = m.forward(&ids).unwrap();
    let w = m.blocks[1].down_proj.weight().zeros_like().unwrap();
    m.blocks[1].set_weight(LayerKind::Down, w).unwrap();
    assert!(max_abs_diff(&before, &m.forward(&ids).unwrap()) > 1e-3);
    assert!(m.blocks[0]
        .set_weight(
            LayerKind::Other,
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap()
        )
        .is_err());
}

#[test]
fn out_of_vocab_ids_are_errors() {
    let m = tiny(Arch::Llama);
    assert!(matches!(
        m.ids_tensor(&[&[1, 256]]),
        Err(ModelError::Input(_))
    ));
    assert!(matches!(
        m.ids_tensor(&[&[1, 2], &[3]]),
        Err(ModelError::Input(_))
    ));
    assert!(m.ids_tensor(&[]).is_err());
}

#[test]
fn hf_round_trip_is_exact_and_half_precision_loads() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Gemma3] {
        let m = tiny(arch);
        let ids = ids(&m, 2, 8);
        let want = m.forward(&ids).unwrap();
        let d32 = dir.path().join(format!("{arch:?}-f32"));
        write_hf(&m, &d32, DType::F32).unwrap();
        let back = Model::load(&d32, &Device::Cpu).unwrap();
        assert_eq!(back.config, m.config);
        assert_eq!(back.blocks[0].q_proj.bias().is_some(), arch == Arch::Qwen2);
        assert_eq!(max_abs_diff(&back.forward(&ids).unwrap(), &want), 0.0);
        // A path to a file inside the directory works too.
        Model::load(&d32.join("config.json"), &Device::Cpu).unwrap();
        for dtype in [DType::F16, DType::BF16] {
            let dh = dir.path().join(format!("{arch:?}-{dtype:?}"));
            write_hf(&m, &dh, dtype).unwrap();
            let half = Model::load(&dh, &Device::Cpu).unwrap();
            let exact = half.blocks[0].up_proj.weight();
            let rounded = m.blocks[0]
                .up_proj
                .weight()
                .to_dtype(dtype)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            assert_eq!(max_abs_diff(exact, &rounded), 0.0);
            let d = max_abs_diff(&half.forward(&ids).unwrap(), &want);
            assert!(d < 0.1, "{arch:?} {dtype:?}: {d}");
        }
    }
}

#[test]
fn sharded_hf_directory_loads() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(Arch::Llama);
    let tensors = m.hf_tensors();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (part, file) in [
        (a, "model-00001-of-00002.safetensors"),
        (b, "model-00002-of-00002.safetensors"),
    ] {
        let h: std::collections::HashMap<String, Tensor> = part.iter().cloned().collect();
        candle_core::safetensors::save(&h, dir.path().join(file)).unwrap();
        for (n, _) in part {
            map.insert(n.clone(), file.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        m.config.to_hf_json().to_string(),
    )
    .unwrap();
    let back = Model::load(dir.path(), &Device::Cpu).unwrap();
    let ids = ids(&m, 1, 6);
    assert_eq!(
        max_abs_diff(&back.forward(&ids).unwrap(), &m.forward(&ids).unwrap()),
        0.0
    );
}

/// `w` as it comes back from a GGUF of `dtype`: quantization is per row (blocks run along the
/// input dimension), so it commutes with llama.cpp's row permutation.
fn quantized(w: &Tensor, dtype: GgmlDType) -> Tensor {
    QTensor::quantize(w, dtype)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
}

#[test]
fn gguf_round_trip_unpermutes_and_dequantizes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Gemma3] {
        let m = tiny(arch);
        let ids = ids(&m, 2, 8);
        let want = m.forward(&ids).unwrap();
        for (linear, embed, tol) in [
            (GgmlDType::F32, GgmlDType::F32, 0.0),
            (GgmlDType::F16, GgmlDType::F16, 0.1),
            (GgmlDType::Q8_0, GgmlDType::Q8_0, 0.2),
            (GgmlDType::Q4_0, GgmlDType::Q8_0, 2.0),
            (GgmlDType::Q4_1, GgmlDType::Q8_0, 2.0),
        ] {
            let path = dir.path().join(format!("{arch:?}-{linear:?}.gguf"));
            write_gguf(&m, &path, linear, embed).unwrap();
            let g = Model::load(&path, &Device::Cpu).unwrap();
            assert_eq!(g.config.arch, arch);
            assert_eq!(g.config.tie_word_embeddings, m.config.tie_word_embeddings);
            for (kind, lin) in g.blocks[1].linears() {
                let orig = m.blocks[1].linear(kind).unwrap().weight();
                let d = max_abs_diff(lin.weight(), &quantized(orig, linear));
                assert_eq!(d, 0.0, "{arch:?} {linear:?} {kind:?}: rows out of order?");
            }
            let logits = g.forward(&ids).unwrap();
            let d = max_abs_diff(&logits, &want);
            assert!(d <= tol, "{arch:?} {linear:?}: max |Δ logits| = {d}");
        }
    }
}

#[test]
fn gguf_k_quants_dequantize() {
    // K-quants work on 256-wide super-blocks, wider than the tiny model: check tensor-level.
    let dir = tempfile::tempdir().unwrap();
    let w = Tensor::from_vec(
        (0..4 * 256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect::<Vec<_>>(),
        (4, 256),
        &Device::Cpu,
    )
    .unwrap();
    for dtype in [
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
    ] {
        let path = dir.path().join(format!("{dtype:?}.gguf"));
        let q = QTensor::quantize(&w, dtype).unwrap();
        let mut f = std::fs::File::create(&path).unwrap();
        candle_core::quantized::gguf_file::write(&mut f, &[], &[("t", &q)]).unwrap();
        drop(f);
        let mut g = gguf::GgufFile::open(&path).unwrap();
        let back = g.tensor("t", &[4, 256], &Device::Cpu).unwrap();
        assert_eq!(max_abs_diff(&back, &quantized(&w, dtype)), 0.0);
        assert!(max_abs_diff(&back, &w) < 0.1, "{dtype:?}");
        assert!(matches!(
            g.tensor("t", &[256, 4], &Device::Cpu),
            Err(ModelError::Weight { .. })
        ));
    }
}

#[test]
fn permutation_round_trips_and_matches_llama_cpp() {
    // One head of width 4 (rows r0..r3): llama.cpp stores HF rows (r0, r2, r1, r3).
    let t = Tensor::new(&[[0f32], [1.0], [2.0], [3.0]], &Device::Cpu).unwrap();
    let p = gguf::permute_rows(&t, 1).unwrap();
    assert_eq!(
        p.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![0.0, 2.0, 1.0, 3.0]
    );
    let back = gguf::unpermute_rows(&p, 1).unwrap();
    assert_eq!(max_abs_diff(&back, &t), 0.0);
    assert!(gguf::unpermute_rows(&t, 3).is_err());
}

fn gguf_bytes(arch: Arch) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    write_gguf(&tiny(arch), &path, GgmlDType::Q8_0, GgmlDType::Q8_0).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (dir, path, bytes)
}

#[test]
fn truncated_or_corrupt_gguf_is_an_error_not_a_panic() {
    let (dir, _, bytes) = gguf_bytes(Arch::Llama);
    let bad = dir.path().join("bad.gguf");
    for len in [0, 3, 4, 10, 24, 100, 500, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&bad, &bytes[..len]).unwrap();
        let r = Model::load_gguf(&bad, &Device::Cpu);
        assert!(r.is_err(), "truncated to {len} bytes loaded");
    }
    // Flip bytes across the header (counts, lengths, types, dims, offsets): never a panic.
    let header = bytes.len().min(4096);
    for pos in (8..header).step_by(7) {
        let mut b = bytes.clone();
        b[pos] ^= 0xA5;
        std::fs::write(&bad, &b).unwrap();
        let _ = Model::load_gguf(&bad, &Device::Cpu);
    }
}

#[test]
fn unsupported_gguf_architecture_is_named() {
    let (_dir, path, bytes) = gguf_bytes(Arch::Llama);
    // Same length as "llama" keeps the file layout intact.
    let needle = b"llama";
    let at = bytes.windows(5).position(|w| w == needle).unwrap();
    let mut b = bytes.clone();
    b[at..at + 5].copy_from_slice(b"gemma");
    std::fs::write(&path, &b).unwrap();
    let err = Model::load(&path, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture(ref a) if a == "gemma"),
        "{err}"
    );
}

#[test]
fn bad_hf_directories_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(Arch::Llama);
    let d = dir.path().join("m");
    write_hf(&m, &d, DType::F32).unwrap();
    let st = d.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    for len in [0, 7, 8, 50, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&st, &bytes[..len]).unwrap();
        assert!(Model::load(&d, &Device::Cpu).is_err(), "truncated to {len}");
    }
    std::fs::write(&st, &bytes).unwrap();
    // A config that does not match the weights.
    let mut cfg = m.config.clone();
    cfg.intermediate_size = 96;
    std::fs::write(d.join("config.json"), cfg.to_hf_json().to_string()).unwrap();
    assert!(matches!(
        Model::load(&d, &Device::Cpu),
        Err(ModelError::Weight { .. })
    ));
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    assert!(matches!(
        Model::load(&d, &Device::Cpu),
        Err(ModelError::Config(_))
    ));
    std::fs::remove_file(&st).unwrap();
    std::fs::write(d.join("config.json"), m.config.to_hf_json().to_string()).unwrap();
    assert!(matches!(
        Model::load(&d, &Device::Cpu),
        Err(ModelError::Format { .. })
    ));
    // Neither GGUF nor HF.
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"not a model").unwrap();
    assert!(matches!(
        Model::load(&junk, &Device::Cpu),
        Err(ModelError::Format { .. })
    ));
    assert!(matches!(
        Model::load(&dir.path().join("missing"), &Device::Cpu),
        Err(ModelError::Io { .. })
    ));
}
