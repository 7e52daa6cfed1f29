"""`python -m bot` is the same as the `bot` command."""

from bot.launch import main

main()
