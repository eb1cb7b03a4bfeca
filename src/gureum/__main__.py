from gureum.cli.main import main

main()
