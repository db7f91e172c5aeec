"""disnet serving layer: serving loops above the planners (design.md, "The shape for the next stage")."""
