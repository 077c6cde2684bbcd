"""Names every part shares: the evaluation sets' keys in a metrics dict, and the files a run, soup or
init folder holds. Change one here and it changes everywhere."""

# Evaluation sets (keys of every metrics dict, run.json and soup.json)
HELD_OUT = "val"          # the held-out split (ImageNet2p in the paper): ranks and selects, never trained on
TEST = "test"             # ImageNet val in the paper: reported, never used to choose
AVG_SHIFTS = "avg_shifts"  # the unweighted mean over the distribution shifts
DISPLAY_NAMES = {HELD_OUT: "held-out", AVG_SHIFTS: "avg shifts"}  # in tables and figures; other keys as they are

# Files in a folder
WEIGHTS_NAME = "model.safetensors"   # a run's, a soup's or an init's weights
RUN_INFO_NAME = "run.json"           # written last by a finished fine-tune (and a soup, in the same schema)
STATE_NAME = "train_state.pt"        # a fine-tune's resumable training state; deleted once run.json exists
INIT_INFO_NAME = "init.json"         # the shared initialization's record
SOUP_INFO_NAME = "soup.json"         # what a recipe chose and how it scored
REPORT_NAME = "report.md"            # a soup job's table
FIGURE_NAME = "figure.png"           # a soup job's figure: test vs. average over the shifts
