"""The bad-input survey: hostile or careless inputs tried against the `iggt` command line as a user would."""
