//! Greedy generation with a key/value cache.

use crate::error::{LlmError, Result};
use crate::model::{KvCache, LlamaModel};
use crate::tokenizer::LlamaTokenizer;

/// Greedy (argmax) continuation of `prompt`: at most `max_new_tokens` new ids, stopping after
/// the first id in `stop` (which is included in the result). The prompt runs in one pass; each
/// new token then runs alone against the cached keys and values. Ties in the argmax go to
/// the lowest id.
pub fn generate_greedy(
    model: &LlamaModel,
    prompt: &[u32],
    max_new_tokens: usize,
    stop: &[u32],
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(LlmError::invalid(
            "prompt",
            "[]",
            "needs at least one token",
        ));
    }
    let rope = model.rope(prompt.len() + max_new_tokens)?;
    let mut cache = KvCache::new(model.num_blocks());
    let mut out = Vec::with_capacity(max_new_tokens);
    let mut next_input = prompt.to_vec();
    for _ in 0..max_new_tokens {
        let tokens = model.tokens(&[&next_input])?;
        let logits = model.forward_cached(tokens, &rope, &mut cache)?;
        let id = logits.argmax(1).into_scalar::<i64>();
        let id = u32::try_from(id).map_err(|_| LlmError::TokenOutOfRange {
            id,
            vocab: model.hparams().vocab_size,
        })?;
        out.push(id);
        if stop.contains(&id) {
            break;
        }
        next_input = vec![id];
    }
    Ok(out)
}

/// Greedy continuation of a text prompt: the prompt is encoded without adding special tokens
/// (special tokens written in it, such as ChatML's `<|im_start|>`, are still recognized),
/// generation stops at the tokenizer's end-of-sequence ids, and the new tokens are decoded
/// with special tokens dropped.
pub fn generate_text(
    model: &LlamaModel,
    tokenizer: &LlamaTokenizer,
    prompt: &str,
    max_new_tokens: usize,
) -> Result<String> {
    let ids = tokenizer.encode(prompt, false)?;
    let new = generate_greedy(model, &ids, max_new_tokens, tokenizer.eos_ids())?;
    tokenizer.decode(&new, true)
}
