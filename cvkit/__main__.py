from cvkit.cli import main

main()
