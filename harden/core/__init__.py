"""What every stage shares: the stage protocol and its registry, the run state handed from stage to stage."""
