"""Signal adapters: each receives signals from one kind of source and hands them to the bot."""
