from gateway.commands import main

main()
