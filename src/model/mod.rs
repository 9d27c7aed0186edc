//! Real models around the attention variants: a GGUF reader ([`gguf`]), a Llama-family
//! forward pass whose attention is any registered variant ([`llama`]), the model's own
//! byte-level BPE tokenizer ([`tokenizer`]), and the perplexity of a model with each variant
//! substituted ([`crate::harness::perplexity`]).

pub mod gguf;
pub mod llama;
pub mod tokenizer;
