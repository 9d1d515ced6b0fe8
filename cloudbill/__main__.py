from cloudbill.cli import main

main()
