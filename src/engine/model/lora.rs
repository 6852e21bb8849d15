//! LoRA adapters, compatible with PEFT: `y = x W + b + s (dropout(x) A) B` beside a frozen
//! base, with `s = lora_alpha / r` (or `/ sqrt(r)` with rsLoRA). The product `W + s A B` is
//! never formed while training: the adapter costs two thin matmuls per projection and the base
//! weights carry no gradient and no optimizer state.
//!
//! On disk an adapter is PEFT's folder: `adapter_config.json` and `adapter_model.safetensors`
//! with PEFT's keys (`base_model.model.<module>.lora_A.weight` `[r, in]`, `lora_B.weight`
//! `[out, r]`, and `base_model.model.<module>.weight` for `modules_to_save`). The reference
//! model of DPO / GRPO / PPO is the same base with the adapters removed
//! ([`without_adapters`]): it shares the frozen weights, so no second copy is held.

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use serde::{Deserialize, Serialize};

use super::blocks::Linear;
use super::precision::f32_val;
use super::weights::{HostTensor, NamedTensors};
use super::{CausalLm, Family, ModelError, hf, host_f32, transpose};

/// Which projections get an adapter: PEFT's module names, or every linear layer of the
/// decoder blocks (`"all-linear"`, which leaves the output heads alone).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    Names(Vec<String>),
    Preset(String),
}

impl Default for TargetModules {
    fn default() -> Self {
        TargetModules::Preset("all-linear".into())
    }
}

/// A `[lora]` config section, with PEFT's `LoraConfig` names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    pub use_rslora: bool,
    /// Whole modules trained and saved beside the adapters (e.g. `["score"]`).
    pub modules_to_save: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: TargetModules::default(),
            use_rslora: false,
            modules_to_save: Vec::new(),
        }
    }
}

/// What a model with adapters remembers about them: their config and the base model's path
/// (written as `base_model_name_or_path`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterInfo {
    pub config: LoraConfig,
    pub base: String,
}

impl AdapterInfo {
    /// One line for logs and the workbench: `LoRA r=16 alpha=32 all-linear`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let targets = match &c.target_modules {
            TargetModules::Preset(p) => p.clone(),
            TargetModules::Names(n) => n.join(","),
        };
        format!(
            "LoRA r={} alpha={}{} {targets}",
            c.r,
            c.lora_alpha,
            if c.use_rslora { " rslora" } else { "" }
        )
    }
}

/// The projection names a decoder layer has (canonical, as Llama's checkpoints name them).
const LAYER_PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

impl LoraConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.r == 0 {
            return Err("[lora] r must be positive".into());
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err("[lora] lora_dropout must be in [0, 1)".into());
        }
        if let TargetModules::Preset(p) = &self.target_modules
            && p != "all-linear"
        {
            return Err(format!(
                "[lora] target_modules = \"{p}\": give a list of module names or \"all-linear\""
            ));
        }
        for m in &self.modules_to_save {
            if m != "score" && m != "lm_head" {
                return Err(format!(
                    "[lora] modules_to_save: `{m}` is not supported (score, lm_head)"
                ));
            }
        }
        Ok(())
    }

    /// `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Whether the projection named `name` (canonical, e.g. `model.layers.3.mlp.up_proj`) is
    /// a target: PEFT matches a module when its name equals a target or ends with `.target`.
    fn targets(&self, name: &str) -> bool {
        match &self.target_modules {
            TargetModules::Preset(_) => name.starts_with("model.layers."),
            TargetModules::Names(names) => names
                .iter()
                .any(|t| name == t || name.ends_with(&format!(".{t}"))),
        }
    }

    /// Refuses targets rlft cannot place: fused projections (Phi-3's `qkv_proj` and
    /// `gate_up_proj`, GPT-2's Conv1D), names that match nothing.
    fn check_targets(&self, family: Family) -> Result<(), String> {
        let fused = matches!(family, Family::Phi3 | Family::Gpt2);
        match &self.target_modules {
            TargetModules::Preset(_) if fused => Err(format!(
                "[lora] target_modules = \"all-linear\" on {}: LoRA on its fused projections is not supported; target unfused ones (o_proj, down_proj)",
                family.model_type()
            )),
            TargetModules::Preset(_) => Ok(()),
            TargetModules::Names(names) => {
                for n in names {
                    let last = n.rsplit('.').next().unwrap_or(n);
                    if !LAYER_PROJECTIONS.contains(&last)
                        || (fused && last != "o_proj" && last != "down_proj")
                    {
                        return Err(format!(
                            "[lora] target_modules: `{n}` is not a projection rlft can adapt on {} ({})",
                            family.model_type(),
                            if fused {
                                "o_proj, down_proj".to_string()
                            } else {
                                LAYER_PROJECTIONS.join(", ")
                            }
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// One adapter: `A` `[in, r]` and `B` `[r, out]` (Burn's layout; PEFT stores them
/// transposed).
#[derive(Module, Debug)]
pub struct Lora {
    pub a: Param<Tensor<2>>,
    pub b: Param<Tensor<2>>,
    #[module(skip)]
    pub scale: f64,
    #[module(skip)]
    pub dropout: f64,
}

impl Lora {
    /// `s (dropout(x) A) B`; dropout only while training (on an autodiff device).
    pub fn delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let x = if self.dropout > 0.0 && x.device().is_autodiff() {
            let keep = 1.0 - self.dropout;
            let mask = x.random_like(Distribution::Bernoulli(keep));
            x * mask * (1.0 / keep)
        } else {
            x
        };
        let low = burn::tensor::module::linear(x, f32_val(&self.a), None);
        burn::tensor::module::linear(low, f32_val(&self.b), None) * self.scale
    }
}

/// Every linear layer of the model under its canonical name (heads included).
fn linears_mut(model: &mut CausalLm) -> Vec<(String, &mut Linear)> {
    let mut out: Vec<(String, &mut Linear)> = Vec::new();
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        let a = &mut layer.self_attn;
        out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
        out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
        out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
        out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
        let m = &mut layer.mlp;
        if let Some(g) = m.gate_proj.as_mut() {
            out.push((format!("{p}.mlp.gate_proj"), g));
        }
        out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
        out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
    }
    if let Some(h) = model.lm_head.as_mut() {
        out.push(("lm_head".into(), h));
    }
    if let Some(s) = model.score.as_mut() {
        out.push(("score".into(), s));
    }
    out
}

/// Freezes the model and adds fresh adapters (A ~ PEFT's Kaiming-uniform, bound
/// 1/sqrt(in); B = 0, so training starts from the base model exactly) on the targets;
/// `modules_to_save` stay trainable.
pub fn add_adapters(
    mut model: CausalLm,
    family: Family,
    cfg: &LoraConfig,
    base: &str,
    seed: u64,
) -> Result<CausalLm, String> {
    cfg.validate()?;
    cfg.check_targets(family)?;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x10ba);
    model = model.no_grad();
    let mut added = 0;
    for (name, linear) in linears_mut(&mut model) {
        if cfg.modules_to_save.iter().any(|m| m == &name) {
            linear.weight = linear.weight.clone().set_require_grad(true);
            linear.bias = linear.bias.clone().map(|b| b.set_require_grad(true));
            continue;
        }
        if !cfg.targets(&name) {
            continue;
        }
        let [d_in, d_out] = linear.weight.dims();
        let device = linear.weight.val().device();
        let bound = 1.0 / (d_in as f32).sqrt();
        let a: Vec<f32> = (0..d_in * cfg.r)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        linear.lora = Some(Lora {
            a: Param::from_tensor(Tensor::from_data(
                TensorData::new(a, [d_in, cfg.r]),
                &device,
            )),
            b: Param::from_tensor(Tensor::zeros([cfg.r, d_out], &device)),
            scale: cfg.scale(),
            dropout: cfg.lora_dropout,
        });
        added += 1;
    }
    if added == 0 {
        return Err("[lora] target_modules matched no projection of this model".into());
    }
    model.adapter = Some(AdapterInfo {
        config: cfg.clone(),
        base: base.to_string(),
    });
    Ok(model)
}

/// Whether any projection carries an adapter (`adapter` is set exactly when one is attached).
pub fn has_adapters(model: &CausalLm) -> bool {
    model.adapter.is_some()
}

/// The same model without its adapters: for a LoRA policy, the base it started from (the
/// reference model), sharing the frozen weights.
pub fn without_adapters(mut model: CausalLm) -> CausalLm {
    for (_, linear) in linears_mut(&mut model) {
        linear.lora = None;
    }
    model.adapter = None;
    model
}

/// Folds every adapter into its weight, `W + s A B` (for inference and `rlft merge`).
pub fn merge(mut model: CausalLm) -> CausalLm {
    for (_, linear) in linears_mut(&mut model) {
        if let Some(l) = linear.lora.take() {
            let delta = f32_val(&l.a).matmul(f32_val(&l.b)) * l.scale;
            // A base stored narrow (`[model] dtype`) stays narrow.
            let stored = linear.weight.val().dtype();
            let w = (f32_val(&linear.weight) + delta).cast(stored);
            linear.weight = Param::from_tensor(w);
        }
    }
    model.adapter = None;
    model
}

/// A no-grad copy of `model` for decoding (rollouts, evaluation). On a base stored in f32
/// the adapters are merged (`W + s A B`, a copy of each adapted matrix for the rollout's
/// duration), so decoding costs what the base costs instead of two more small products per
/// projection and token. On a base stored narrow (`[model] dtype`) they stay apart: the
/// narrow rounding of `W + s A B` would swallow the adapters' small early updates.
pub fn for_generation(model: &CausalLm) -> CausalLm {
    let plain = model.valid();
    if base_dtype(&plain) == burn::tensor::DType::F32 {
        merge(plain)
    } else {
        plain
    }
}

/// Parameters that train and parameters in all, for the workbench (`trainable / total`, as
/// PEFT's `print_trainable_parameters` says).
pub fn parameter_counts(model: &CausalLm) -> (usize, usize) {
    struct Count {
        trainable: usize,
        total: usize,
    }
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let n: usize = param.shape().num_elements();
            self.total += n;
            if param.val().is_require_grad() {
                self.trainable += n;
            }
        }
    }
    let mut c = Count {
        trainable: 0,
        total: 0,
    };
    model.visit(&mut c);
    (c.trainable, c.total)
}

/// The workbench's view of what `model` trains.
pub fn summary(model: &CausalLm) -> crate::engine::events::ModelSummary {
    let (trainable, total) = parameter_counts(model);
    crate::engine::events::ModelSummary {
        trainable,
        total,
        adapter: model
            .adapter
            .as_ref()
            .map(|a| a.describe() + &narrow_base_note(model)),
    }
}

/// ` · base in bf16` when the frozen weights are stored narrow (`[model] dtype`), else empty.
fn narrow_base_note(model: &CausalLm) -> String {
    match base_dtype(model) {
        burn::tensor::DType::BF16 => " · base in bf16".into(),
        burn::tensor::DType::F16 => " · base in f16".into(),
        _ => String::new(),
    }
}

/// How the decoder's matrices are stored (`[model] dtype` narrows a frozen base).
fn base_dtype(model: &CausalLm) -> burn::tensor::DType {
    model.embed_tokens.val().dtype()
}

/// `trainable params: 1,843,200 || all params: 136,358,208 || trainable%: 1.35 · LoRA r=16
/// alpha=32 all-linear`, as PEFT's `print_trainable_parameters` says it (full fine-tuning
/// says so instead of LoRA).
pub fn describe_parameters(model: &CausalLm) -> String {
    let (trainable, total) = parameter_counts(model);
    let group = |n: usize| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    let kind = match &model.adapter {
        Some(info) => info.describe() + &narrow_base_note(model),
        None => "full fine-tuning".into(),
    };
    format!(
        "trainable params: {} || all params: {} || trainable%: {:.2} · {kind}",
        group(trainable),
        group(total),
        100.0 * trainable as f64 / total.max(1) as f64
    )
}

const PREFIX: &str = "base_model.model.";

/// PEFT's `adapter_config.json` for `cfg` on `base`.
fn peft_config(cfg: &LoraConfig, base: &str, classifier: bool) -> serde_json::Value {
    let targets = match &cfg.target_modules {
        TargetModules::Names(n) => serde_json::json!(n),
        TargetModules::Preset(_) => serde_json::json!(LAYER_PROJECTIONS),
    };
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": if classifier { "SEQ_CLS" } else { "CAUSAL_LM" },
        "base_model_name_or_path": base,
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": targets,
        "use_rslora": cfg.use_rslora,
        "modules_to_save": if cfg.modules_to_save.is_empty() { serde_json::Value::Null } else { serde_json::json!(cfg.modules_to_save) },
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_dora": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    })
}

/// Writes the adapters (and `modules_to_save`) of `model` as a PEFT adapter folder, through a
/// temporary sibling renamed into place.
pub fn save_adapter(
    dir: &Path,
    info: &AdapterInfo,
    model: &CausalLm,
    extra: impl FnOnce(&Path) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let (cfg, base) = (&info.config, info.base.as_str());
    let mut m = model.clone();
    let mut tensors = NamedTensors::new();
    for (name, linear) in linears_mut(&mut m) {
        if let Some(l) = &linear.lora {
            let a = host_f32(l.a.val());
            let b = host_f32(l.b.val());
            let [d_in, r] = l.a.dims();
            let [_, d_out] = l.b.dims();
            tensors.insert(
                format!("{PREFIX}{name}.lora_A.weight"),
                HostTensor::new(vec![r, d_in], transpose(&a, d_in, r)),
            );
            tensors.insert(
                format!("{PREFIX}{name}.lora_B.weight"),
                HostTensor::new(vec![d_out, r], transpose(&b, r, d_out)),
            );
        }
        if cfg.modules_to_save.iter().any(|s| s == &name) {
            let w = host_f32(linear.weight.val());
            let [d_in, d_out] = linear.weight.dims();
            tensors.insert(
                format!("{PREFIX}{name}.weight"),
                HostTensor::new(vec![d_out, d_in], transpose(&w, d_in, d_out)),
            );
            if let Some(b) = &linear.bias {
                tensors.insert(
                    format!("{PREFIX}{name}.bias"),
                    HostTensor::new(vec![d_out], host_f32(b.val())),
                );
            }
        }
    }
    let classifier = model.score.is_some() && model.lm_head.is_none();
    let tmp = dir.with_extension("tmp-save");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    hf::write_safetensors(&tmp.join("adapter_model.safetensors"), &tensors)?;
    hf::write_json(
        &tmp.join("adapter_config.json"),
        &peft_config(cfg, base, classifier),
    )?;
    extra(&tmp)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| ModelError::io(dir, e))
}

/// Whether `dir` is a PEFT adapter folder.
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file()
}

/// `dir/adapter_config.json`, parsed, with its path (for errors).
fn adapter_json(dir: &Path) -> Result<(std::path::PathBuf, serde_json::Value), ModelError> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let v = serde_json::from_str(&text).map_err(|e| ModelError::Format {
        path: path.clone(),
        message: format!("invalid JSON: {e}"),
    })?;
    Ok((path, v))
}

/// Reads a PEFT adapter folder's config as a [`LoraConfig`].
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig, ModelError> {
    let (path, v) = adapter_json(dir)?;
    let bad = |message: String| ModelError::Format {
        path: path.clone(),
        message,
    };
    if v.get("peft_type")
        .and_then(|t| t.as_str())
        .unwrap_or("LORA")
        != "LORA"
    {
        return Err(bad(format!(
            "`peft_type` = {}: only LORA adapters are supported",
            v["peft_type"]
        )));
    }
    for unsupported in ["use_dora", "fan_in_fan_out"] {
        if v.get(unsupported).and_then(|x| x.as_bool()) == Some(true) {
            return Err(bad(format!("`{unsupported}` = true is not supported")));
        }
    }
    for patterns in ["rank_pattern", "alpha_pattern"] {
        if v.get(patterns)
            .and_then(|x| x.as_object())
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(format!(
                "`{patterns}` (per-module ranks) is not supported"
            )));
        }
    }
    if v.get("bias")
        .and_then(|x| x.as_str())
        .is_some_and(|b| b != "none")
    {
        return Err(bad(format!(
            "`bias` = {}: only \"none\" is supported",
            v["bias"]
        )));
    }
    let target_modules = match &v["target_modules"] {
        serde_json::Value::String(s) => TargetModules::Preset(s.clone()),
        serde_json::Value::Array(a) => TargetModules::Names(
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
        ),
        other => {
            return Err(bad(format!(
                "`target_modules` = {other} is not a list or a string"
            )));
        }
    };
    let modules_to_save = match &v["modules_to_save"] {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            // PEFT adds the classifier's aliases for SEQ_CLS; rlft's head is `score`.
            .filter(|m| m == "score" || m == "lm_head")
            .collect(),
        _ => Vec::new(),
    };
    let cfg = LoraConfig {
        r: v["r"]
            .as_u64()
            .ok_or_else(|| bad("`r` is missing".into()))? as usize,
        lora_alpha: v["lora_alpha"].as_f64().unwrap_or(8.0),
        lora_dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
        target_modules,
        use_rslora: v["use_rslora"].as_bool().unwrap_or(false),
        modules_to_save,
    };
    cfg.validate().map_err(bad)?;
    Ok(cfg)
}

/// Attaches the adapter saved in `dir` to `model` (frozen base); the adapters train when
/// `model` is on an autodiff device. Every tensor in the file must find its module.
pub fn load_adapter(mut model: CausalLm, dir: &Path, base: &str) -> Result<CausalLm, ModelError> {
    let cfg = read_adapter_config(dir)?;
    let file = dir.join("adapter_model.safetensors");
    let mut tensors = NamedTensors::new();
    hf::read_safetensors(&file, &mut tensors)?;
    let bad = |message: String| ModelError::Format {
        path: file.clone(),
        message,
    };
    model = model.no_grad();
    for (name, linear) in linears_mut(&mut model) {
        let [d_in, d_out] = linear.weight.dims();
        let device = linear.weight.val().device();
        let a_key = format!("{PREFIX}{name}.lora_A.weight");
        let b_key = format!("{PREFIX}{name}.lora_B.weight");
        if let (Some(a), Some(b)) = (tensors.remove(&a_key), tensors.remove(&b_key)) {
            let r = a.shape[0];
            if a.shape != [r, d_in] || b.shape != [d_out, r] {
                return Err(bad(format!(
                    "`{a_key}` {:?} / `{b_key}` {:?} do not fit a [{d_out}, {d_in}] projection",
                    a.shape, b.shape
                )));
            }
            let scale = if cfg.use_rslora {
                cfg.lora_alpha / (r as f64).sqrt()
            } else {
                cfg.lora_alpha / r as f64
            };
            linear.lora = Some(Lora {
                a: Param::from_tensor(Tensor::from_data(
                    TensorData::new(transpose(&a.data, r, d_in), [d_in, r]),
                    &device,
                )),
                b: Param::from_tensor(Tensor::from_data(
                    TensorData::new(transpose(&b.data, d_out, r), [r, d_out]),
                    &device,
                )),
                scale,
                dropout: cfg.lora_dropout,
            });
        }
        // `modules_to_save`: PEFT saves the whole module under its own name.
        if let Some(w) = tensors.remove(&format!("{PREFIX}{name}.weight")) {
            if w.shape != [d_out, d_in] {
                return Err(bad(format!(
                    "`{PREFIX}{name}.weight` has shape {:?}",
                    w.shape
                )));
            }
            linear.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(transpose(&w.data, d_out, d_in), [d_in, d_out]),
                &device,
            ));
            if let Some(b) = tensors.remove(&format!("{PREFIX}{name}.bias")) {
                linear.bias = Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(b.data, [d_out]),
                    &device,
                )));
            }
        }
    }
    if let Some(left) = tensors.keys().next() {
        return Err(bad(format!(
            "tensor `{left}` matches no module of this model ({} more unmatched)",
            tensors.len() - 1
        )));
    }
    model.adapter = Some(AdapterInfo {
        config: cfg,
        base: base.to_string(),
    });
    Ok(model)
}

/// The base model an adapter folder names (`base_model_name_or_path`), as a path: absolute,
/// or relative to the adapter folder or the working directory.
pub fn adapter_base(dir: &Path) -> Result<std::path::PathBuf, ModelError> {
    let (path, v) = adapter_json(dir)?;
    let base = v["base_model_name_or_path"].as_str().unwrap_or("");
    let candidates = [dir.join(base), std::path::PathBuf::from(base)];
    candidates
        .into_iter()
        .find(|p| !base.is_empty() && p.exists())
        .ok_or_else(|| ModelError::Config {
            path,
            message: format!(
                "`base_model_name_or_path` = \"{base}\" is not a model folder or file here; \
                 give the base explicitly (`--model BASE --adapter ADAPTER`, or `[model] path` \
                 with `adapter`)"
            ),
        })
}
