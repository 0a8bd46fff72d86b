"""bar's vocabulary: the names that the logging code writes and the analysis reads (CONVENTIONS.md), spelled once.

Plain constants only (no torch, Hydra or MLflow), so analysis/ and every layer of bar/ can import them.
"""

# ------------------------------------------------------------------------------------------- run status (tag)
FINISHED = "finished"
INFEASIBLE = "infeasible"      # cannot run (its estimated memory exceeds the budget): recorded, nothing trained
FAILED = "failed"
RUNNING = "running"
INTERRUPTED = "interrupted"    # Ctrl-C or a stop signal: the next launch continues it
STATUSES = (FINISHED, FAILED, INFEASIBLE, RUNNING, INTERRUPTED)
DONE_STATUSES = (FINISHED, INFEASIBLE)             # a later launch skips these points
RESUMABLE_STATUSES = (RUNNING, INTERRUPTED)        # a later launch continues these runs

# ------------------------------------------------------------------------------- params naming the latent and head
TOKENIZER_KIND = "tokenizer.kind"
TOKENIZER_BITS = "tokenizer.bits"          # discrete: bits per token; binary FSQ has C = 2^bits codes, so log2 C
TOKENIZER_CHANNELS = "tokenizer.channels"  # continuous: latent channels (16 bits each on the paper's axis)
HEAD_NAME = "head.name"

# ---------------------------------------------------------------------------------- tokenizer kinds and latents
FSQ = "fsq"    # binary FSQ: discrete tokens carried as bits
AE = "ae"      # autoencoder: continuous tokens
LATENT_KIND_LABEL = {FSQ: "discrete", AE: "continuous"}
TOKENIZER_LABEL = {FSQ: "BAR-FSQ", AE: "AE"}
# A figure's series for one kind of latent: "discrete (BAR-FSQ)", "continuous (AE)".
LATENT_SERIES_LABEL = {kind: f"{LATENT_KIND_LABEL[kind]} ({TOKENIZER_LABEL[kind]})" for kind in (FSQ, AE)}

# -------------------------------------------------------------------------------------------------------- heads
MBM = "mbm"              # masked bit modeling: the paper's head (BAR)
SOFTMAX = "softmax"
BITWISE = "bitwise"
DIFFUSION = "diffusion"
HEAD_ORDER = (MBM, SOFTMAX, BITWISE, DIFFUSION)    # the order figures and tables list heads in
DISCRETE_HEADS = (MBM, SOFTMAX, BITWISE)
HEAD_LABEL = {MBM: "MBM (BAR)", SOFTMAX: "softmax", BITWISE: "per-bit", DIFFUSION: "diffusion"}
# Tables name a head without the parenthesis: "MBM (BAR)" -> "MBM".
HEAD_SHORT_LABEL = {head: label.split(" (")[0] for head, label in HEAD_LABEL.items()}

# ------------------------------------------------------------------------------------------------------ metrics
RFID = "rfid"
GFID = "gfid"
GFID_NOCFG = "gfid_nocfg"
SFID = "sfid"
INCEPTION_SCORE = "inception_score"
PRECISION = "precision"
RECALL = "recall"
RECON_MSE = "recon_mse"
TOTAL_BITS = "total_bits"
SAMPLE_IMG_PER_S = "sample_img_per_s"
TRAIN_IMG_PER_S = "train_img_per_s"
PEAK_MEM_GB = "peak_mem_gb"
MEM_ESTIMATE_GB = "mem_estimate_gb"
TRAIN_TFLOP = "train_tflop"
TRAIN_LOSS = "train_loss"
TOKENIZER_LOSS = "tokenizer_loss"
# Histories at the loss's steps: each tokenizer loss part the recipe turns on, unweighted (tokenizer_loss_l1, _l2,
# _perceptual, _distillation, _gram, _gan from its start step, _kl), and the discriminator's statistics from its start
# (discriminator_loss, _logits_real, _logits_fake: means of its logits, _lr).
TOKENIZER_LOSS_PART = TOKENIZER_LOSS + "_"
DISCRIMINATOR = "discriminator_"

HEADLINE_METRICS = (GFID, RFID)        # a point's headline: the first of these it has (rFID: tokenizer-only points)
SUMMARY_METRICS = (GFID, RFID, SAMPLE_IMG_PER_S)   # what the one-line summary of a finished point shows
LOSS_HISTORIES = (TRAIN_LOSS, TOKENIZER_LOSS)      # logged at every step
# Evaluations logged during training (step = optimizer step; tokenizer steps for rFID).
EVALUATION_HISTORIES = (GFID, GFID_NOCFG, TRAIN_TFLOP, RFID)
