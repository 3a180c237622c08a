"""Named constants of the GLM-4-Voice system, each with its unit and source.

Sources: ../shared/SPEC.md (section numbers in comments), the official GLM-4-Voice repository.
"""

# --- speech tokenizer (SPEC §1) -------------------------------------------------------------
TOKENIZER_SAMPLE_RATE = 16_000  # Hz, input rate of the Whisper front end
MEL_N_FFT = 400  # samples
MEL_HOP = 160  # samples (10 ms, 100 frames/s)
MEL_BINS = 128
CHUNK_SECONDS = 30  # the official extractor cuts audio into independent 30 s chunks
CHUNK_SAMPLES = CHUNK_SECONDS * TOKENIZER_SAMPLE_RATE  # 480_000 samples
TOKEN_HOP_SAMPLES = 1280  # samples per speech token: conv stride 2 x pool 4 x hop 160 (80 ms)
TOKEN_RATE_HZ = 12.5  # speech tokens per second
MAX_TOKENIZER_BATCH = 128  # chunks per forward in the official extractor
CODEBOOK_SIZE = 16_384  # entries of the released VQ codebook

# --- language model (SPEC §2) ---------------------------------------------------------------
TEXT_TOKENS_PER_BLOCK = 13  # "streaming thoughts": 13 text tokens ...
AUDIO_TOKENS_PER_BLOCK = 26  # ... then 26 audio tokens, repeated
SPECIAL_TOKENS = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>",
    "<|begin_of_video|>", "<|end_of_video|>",
)  # numbered from the end of the BPE ranks, in this order (SPEC §2.5)
BEGIN_OF_AUDIO = "<|begin_of_audio|>"
END_OF_AUDIO = "<|end_of_audio|>"
AUDIO_TOKEN_FORMAT = "<|audio_{}|>"

# --- speech decoder (SPEC §3-4) -------------------------------------------------------------
DECODER_SAMPLE_RATE = 22_050  # Hz, HiFT output rate
DECODER_HOP = 256  # samples per mel frame at 22.05 kHz (86.13 frames/s)
DECODER_MEL_BINS = 80
FLOW_BLOCK_TOKENS = 10  # block size of the block-causal conformer token encoder
OFFICIAL_STREAM_BLOCKS = (25, 50, 100, 150, 200)  # web_demo flush sizes in tokens; the last repeats
MEL_OVERLAP_FRAMES = 34  # int(5 / 12.5 * 22050 / 256): Hamming cross-fade between blocks
HIFT_CACHE_FRAMES = 1  # mel frames carried into the next vocoder call
HIFT_CACHE_SAMPLES = 256  # source samples carried into the next vocoder call
FLOW_SEED = 42  # the official flow reseeds with 42 on every call
