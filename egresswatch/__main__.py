from egresswatch.cli.main import main

main()
