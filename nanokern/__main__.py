from nanokern.cli import main

main()
