"""disnet serving layer, above the planners: the adaptive serving loop and its policies, side-by-side
evaluation and calibration, and several streams on one mesh (design.md, "The shape for the next stage")."""
