from maskopt.cli import main

main()
