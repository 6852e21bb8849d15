//! Probe (temporary).
use std::path::Path;

use burn::prelude::*;
use rlft::engine::judge::eval::{chosen_as_a, read_pairs};
use rlft::engine::model::{self, Heads, host_f32};
use rlft::engine::sample::left_pad;
use rlft::engine::tokenizer::ChatMessage;

type Variant = fn(&str, &str) -> (Option<String>, String, String);

fn p1(_p: &str, x: &str) -> (Option<String>, String, String) {
    (None, format!("Review:{x}\n\nIs this review positive? Reply yes or no."), String::new())
}
fn p2(_p: &str, x: &str) -> (Option<String>, String, String) {
    (None, format!("Review: {x}\n\nPrefer the answer that is more positive. Does this answer follow that? Reply yes or no."), String::new())
}
fn p3(_p: &str, x: &str) -> (Option<String>, String, String) {
    (Some("Prefer the answer that is more positive.".into()), format!("Review: {x}\n\nIs this review positive? Reply yes or no."), String::new())
}
fn p4(_p: &str, x: &str) -> (Option<String>, String, String) {
    (None, format!("Review: {x}\n\nIs this review more positive? Reply yes or no."), String::new())
}
fn p5(_p: &str, x: &str) -> (Option<String>, String, String) {
    (None, format!("Review: {x}\n\nIs this positive? Reply yes or no."), String::new())
}
fn p6(_p: &str, x: &str) -> (Option<String>, String, String) {
    (None, format!("Text: Review: {x}\n\nQuestion: Is the text positive?\nReply yes or no."), String::new())
}

#[test]
#[ignore]
fn probe() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let dev = Device::flex();
    let m = model::load(&path, &dev, Heads::Lm).unwrap();
    let tok = m.tokenizer.unwrap();
    let ids = |words: &[&str]| -> Vec<u32> { words.iter().filter_map(|w| { let e = tok.encode(w, false).unwrap(); (e.len() == 1).then(|| e[0]) }).collect() };
    let yes = ids(&["yes", "Yes", " yes", " Yes", "YES"]);
    let no = ids(&["no", "No", " no", " No", "NO"]);
    eprintln!("yes {yes:?} no {no:?} nn {:?}", tok.encode("a\n\nb", false).unwrap());
    let n: usize = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let mut pairs = read_pairs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/data/sentiment_prefs_eval.jsonl")).unwrap();
    pairs.truncate(n);
    let _ = chosen_as_a(n, 0);
    let which: String = std::env::var("V").unwrap_or("123456".into());
    let principle = "Prefer the answer that is more positive.";
    for (k, v) in [p1 as Variant, p1, p2, p3, p4, p5, p6].iter().enumerate() {
        if k == 0 || !which.contains(&k.to_string()) { continue; }
        let t = std::time::Instant::now();
        let mut rows = Vec::new();
        for pp in &pairs {
            for x in [&pp.chosen, &pp.rejected] {
                let (sys, user, prefix) = v(principle, x.trim());
                let mut msgs = Vec::new();
                if let Some(s) = sys { msgs.push(ChatMessage::system(s)); }
                msgs.push(ChatMessage::user(user));
                let text = tok.apply_chat_template(&msgs, true).unwrap() + &prefix;
                rows.push(tok.encode(&text, false).unwrap());
            }
        }
        let all: Vec<u32> = yes.iter().chain(&no).copied().collect();
        let mut scores = Vec::new();
        let mut mass = 0.0;
        for c in rows.chunks(8) {
            let inp = left_pad(c, 0, &dev);
            let [b, tt] = inp.ids.dims();
            let h = m.model.hidden(inp.ids, inp.positions, inp.valid, None).narrow(1, tt - 1, 1);
            let lg = m.model.logits(h).squeeze_dim::<2>(1);
            let probs = burn::tensor::activation::softmax(lg.clone(), 1);
            let idx = Tensor::<1, Int>::from_data(TensorData::new(all.iter().map(|&i| i as i64).collect::<Vec<_>>(), [all.len()]), &dev);
            let pr = host_f32(probs.select(1, idx.clone()));
            let l = host_f32(lg.select(1, idx));
            for r in 0..b {
                let row = &l[r * all.len()..(r + 1) * all.len()];
                mass += pr[r * all.len()..(r + 1) * all.len()].iter().sum::<f32>() as f64;
                let lse = |xs: &[f32]| { let mx = xs.iter().cloned().fold(f32::MIN, f32::max); mx + xs.iter().map(|x| (x - mx).exp()).sum::<f32>().ln() };
                scores.push(lse(&row[..yes.len()]) - lse(&row[yes.len()..]));
            }
        }
        let mut right = 0; let mut ties = 0;
        for i in 0..n { if scores[2 * i] > scores[2 * i + 1] { right += 1 } else if scores[2*i] == scores[2*i+1] { ties += 1 } }
        let mean = scores.iter().sum::<f32>() / scores.len() as f32;
        eprintln!("P{k}: acc {:.3} ties {ties} mean yes-no logit {mean:.2} yes/no mass {:.3} secs {:.1}", right as f64 / n as f64, mass / scores.len() as f64, t.elapsed().as_secs_f64());
    }
}
