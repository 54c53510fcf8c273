"""Authorization: every route names an action; one guard asks the decision point."""
