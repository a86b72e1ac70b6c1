from invoicesync.cli import main

main()
